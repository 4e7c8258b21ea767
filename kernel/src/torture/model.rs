//! The torture test's reference model: what Linux's rules say each line
//! does, kept apart from `mm/` and `proc/` (no shared code or data
//! structure), so that a bug there cannot agree with itself here.
//!
//! It knows processes, their regions page by page (backing, protection,
//! whether a large folio may cover it), page objects with contents and
//! counts (private pages shared copy-on-write after fork, shared anon and
//! memfd pages shared by all mappers, PFN frames), and GUP handles that
//! keep their page objects. Rules followed (Linux's):
//! - a private write to a page that is not exclusive copies it, unless the
//!   page is mapped once and nothing else holds it (reuse);
//! - fork shares private pages copy-on-write, except a pinned exclusive
//!   page, which the child gets a copy of at once;
//! - R/O pins unshare non-exclusive anon pages (and, long-term, the zero
//!   page and file pages of private mappings); references (FOLL_GET) do not;
//! - MADV_DONTNEED drops private copies (anon reads zero again, file maps
//!   read the file) and keeps shared pages;
//! - munmap and exit leave pinned or referenced pages alive for `checkpin`;
//! - `madvise pageout` and `migrate` never change what a page reads: pageout
//!   sends a private page to swap when only this mapping holds it (one
//!   mapping, no pin, no reference) and unmaps page-cache pages; migrate
//!   leaves a mapped page that a pin or a GUP reference holds where it was
//!   and then fails;
//! - userfaultfd write-protect (`UFFD_FEATURE_WP_UNPOPULATED`): `wp on`
//!   protects every page of a registered range, mapped or not; a write to a
//!   protected page counts one event and unprotects that page; zap keeps the
//!   protection in file-backed memory and drops it in private anonymous
//!   memory; fork keeps it only with `fork-events`.
//!
//! It also knows, where that is certain, whether an entry is present and
//! writable (see [`Pte`]). Pure: host-tested.

use alloc::vec;
use alloc::vec::Vec;

use super::ops::{Backing, MapSpec, Op, Prot, QueryFlags, Span, Thp};

pub const MAX_PROCS: usize = 6;
pub const MAX_REGIONS: usize = 6;
pub const MAX_HANDLES: usize = 6;
pub const MAX_FILES: usize = 3;
/// Frames of the PFN pool the torture test maps.
pub const PFN_PAGES: usize = 8;

/// What the model predicts for a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A command carried out.
    Ok,
    /// Refused with an error.
    Refused,
    /// An assertion that holds.
    Pass,
    /// An assertion that does not hold.
    Fail,
}

/// What is known of a page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pte {
    Absent,
    /// Present; writable if known.
    Present(Option<bool>),
    /// A swap entry.
    Swap,
    /// A large folio or the huge zero page may or may not cover it.
    Unknown,
}

type ObjId = u32;
/// The shared zero page: always 0.
const ZERO: ObjId = 0;

#[derive(Clone, Debug)]
struct Obj {
    byte: u8,
    /// An anonymous page (else a file page, a PFN frame or the zero page,
    /// which live as long as the model).
    anon: bool,
    /// Private mappings of it (anon pages only).
    maps: u32,
    pins: u32,
    refs: u32,
    /// PageAnonExclusive.
    exclusive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    Zero,
    /// Page `1` of file `0`.
    File(u16, u16),
    Pfn(u16),
}

#[derive(Clone, Copy, Debug)]
struct PageM {
    base: Base,
    shared: bool,
    pfn: bool,
    prot: Prot,
    /// A large folio may be allocated here (thp=, madvise hugepage).
    thp: bool,
    /// The private (COW) page mapped here, if one exists.
    slot: Option<ObjId>,
    pte: Pte,
    /// In a range registered for uffd write-protect.
    reg: bool,
    /// Write-protected: the entry has the uffd-wp bit or is a marker.
    wp: bool,
    /// `slot` may be in swap (a pageout since the last access here).
    mswap: bool,
}

#[derive(Clone, Debug)]
struct Region {
    pages: Vec<Option<PageM>>,
}

#[derive(Clone, Debug, Default)]
struct Proc {
    regions: [Option<Region>; MAX_REGIONS],
    /// The userfaultfd context, if open: whether it has fork events.
    uffd: Option<bool>,
    /// uffd-wp events since the last `uffd-events expect`.
    events: u32,
}

#[derive(Clone, Debug)]
struct Handle {
    objs: Vec<ObjId>,
    pin: bool,
}

/// What the generator may know about a page.
#[derive(Clone, Copy, Debug)]
pub struct PageInfo {
    pub mapped: bool,
    pub pfn: bool,
    pub thp: bool,
    pub prot: Prot,
    pub pte: Pte,
    /// Registered for uffd write-protect.
    pub reg: bool,
}

#[derive(Clone, Debug)]
pub struct Model {
    procs: [Option<Proc>; MAX_PROCS],
    objs: Vec<Obj>,
    free: Vec<ObjId>,
    /// Page objects of each file: the named memfds first, then unnamed
    /// shared anonymous files.
    files: Vec<Vec<ObjId>>,
    pfn: [ObjId; PFN_PAGES],
    handles: [Option<Handle>; MAX_HANDLES],
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    pub fn new() -> Self {
        let mut m = Model {
            procs: Default::default(),
            objs: vec![Obj { byte: 0, anon: false, maps: 0, pins: 0, refs: 0, exclusive: false }],
            free: Vec::new(),
            files: vec![Vec::new(); MAX_FILES],
            pfn: [ZERO; PFN_PAGES],
            handles: Default::default(),
        };
        // The PFN pool is zeroed at boot.
        for i in 0..PFN_PAGES {
            m.pfn[i] = m.new_obj(0, false);
        }
        m
    }

    fn new_obj(&mut self, byte: u8, anon: bool) -> ObjId {
        let o = Obj { byte, anon, maps: 0, pins: 0, refs: 0, exclusive: anon };
        match self.free.pop() {
            Some(id) => {
                self.objs[id as usize] = o;
                id
            }
            None => {
                self.objs.push(o);
                (self.objs.len() - 1) as ObjId
            }
        }
    }

    /// Drops one private mapping of `o`; frees it when nothing holds it.
    fn unmap_obj(&mut self, o: ObjId) {
        let ob = &mut self.objs[o as usize];
        ob.maps -= 1;
        self.maybe_free(o);
    }

    fn maybe_free(&mut self, o: ObjId) {
        let ob = &self.objs[o as usize];
        if ob.anon && ob.maps == 0 && ob.pins == 0 && ob.refs == 0 {
            self.free.push(o);
        }
    }

    fn base_obj(&self, b: Base) -> ObjId {
        match b {
            Base::Zero => ZERO,
            Base::File(f, i) => self.files[f as usize][i as usize],
            Base::Pfn(i) => self.pfn[i as usize],
        }
    }

    /// The object a page shows: its private copy, or what backs it.
    fn shown(&self, pm: &PageM) -> ObjId {
        pm.slot.unwrap_or_else(|| self.base_obj(pm.base))
    }

    fn page(&self, p: u8, r: u8, i: u16) -> Option<&PageM> {
        self.procs[p as usize].as_ref()?.regions[r as usize].as_ref()?.pages.get(i as usize)?.as_ref()
    }

    fn page_mut(&mut self, p: u8, r: u8, i: u16) -> Option<&mut PageM> {
        self.procs[p as usize].as_mut()?.regions[r as usize].as_mut()?.pages.get_mut(i as usize)?.as_mut()
    }

    fn region_exists(&self, p: u8, r: u8) -> bool {
        self.procs.get(p as usize).and_then(|x| x.as_ref()).is_some_and(|pr| pr.regions[r as usize].is_some())
    }

    // ---- what the generator and the driver may ask

    pub fn live_procs(&self) -> Vec<u8> {
        (0..MAX_PROCS as u8).filter(|&p| self.procs[p as usize].is_some()).collect()
    }

    pub fn regions(&self, p: u8) -> Vec<u8> {
        (0..MAX_REGIONS as u8).filter(|&r| self.region_exists(p, r)).collect()
    }

    pub fn live_handles(&self) -> Vec<u8> {
        (0..MAX_HANDLES as u8).filter(|&h| self.handles[h as usize].is_some()).collect()
    }

    /// The byte every page of handle `h` holds, if they all hold the same.
    pub fn handle_byte(&self, h: u8) -> Option<u8> {
        let hd = self.handles[h as usize].as_ref()?;
        let b = self.objs[*hd.objs.first()? as usize].byte;
        hd.objs.iter().all(|&o| self.objs[o as usize].byte == b).then_some(b)
    }

    pub fn region_pages(&self, p: u8, r: u8) -> Vec<PageInfo> {
        let Some(reg) = self.procs[p as usize].as_ref().and_then(|pr| pr.regions[r as usize].as_ref()) else {
            return Vec::new();
        };
        reg.pages
            .iter()
            .map(|pm| match pm {
                Some(pm) => {
                    PageInfo { mapped: true, pfn: pm.pfn, thp: pm.thp, prot: pm.prot, pte: pm.pte, reg: pm.reg }
                }
                None => {
                    PageInfo { mapped: false, pfn: false, thp: false, prot: Prot::None, pte: Pte::Absent, reg: false }
                }
            })
            .collect()
    }

    /// What page `i` of region `r` reads as in process `p`.
    pub fn view(&self, p: u8, r: u8, i: u16) -> Option<u8> {
        let pm = self.page(p, r, i)?;
        Some(self.objs[self.shown(pm) as usize].byte)
    }

    // ---- the rules

    /// Applies `op` as Linux would and returns the outcome it must have.
    pub fn apply(&mut self, op: &Op) -> Expect {
        match *op {
            Op::Spawn { p } => {
                if self.procs[p as usize].is_some() {
                    return Expect::Refused;
                }
                self.procs[p as usize] = Some(Proc::default());
                Expect::Ok
            }
            Op::Fork { p, c } => self.fork(p, c),
            Op::Exit { p } => {
                let Some(pr) = self.procs[p as usize].take() else { return Expect::Refused };
                for reg in pr.regions.into_iter().flatten() {
                    for pm in reg.pages.into_iter().flatten() {
                        if let Some(o) = pm.slot {
                            self.unmap_obj(o);
                        }
                    }
                }
                Expect::Ok
            }
            Op::Mmap { p, r, m } => self.mmap(p, r, m),
            Op::Munmap { p, r, at } => {
                if !self.region_exists(p, r) || !self.span_ok(p, r, at) {
                    return Expect::Refused;
                }
                for i in at.first..at.first + at.n {
                    let pm = self.procs[p as usize].as_mut().unwrap().regions[r as usize].as_mut().unwrap().pages
                        [i as usize]
                        .take();
                    if let Some(o) = pm.and_then(|pm| pm.slot) {
                        self.unmap_obj(o);
                    }
                }
                let reg = &mut self.procs[p as usize].as_mut().unwrap().regions[r as usize];
                // A munmap that covers the whole region forgets its name.
                if at.first == 0 && at.n as usize == reg.as_ref().unwrap().pages.len() {
                    *reg = None;
                }
                Expect::Ok
            }
            Op::Mprotect { p, r, at, prot } => {
                if !self.span_mapped(p, r, at) {
                    return Expect::Refused;
                }
                for i in at.first..at.first + at.n {
                    let pm = self.page_mut(p, r, i).unwrap();
                    pm.prot = prot;
                    if let Pte::Present(_) = pm.pte {
                        pm.pte = Pte::Present(match prot {
                            Prot::Rw if pm.pfn && pm.shared => Some(true),
                            Prot::Rw => None,
                            _ => Some(false),
                        });
                    }
                }
                Expect::Ok
            }
            Op::Dontneed { p, r, at } => {
                if !self.region_exists(p, r) || !self.span_ok(p, r, at) {
                    return Expect::Refused;
                }
                for i in at.first..at.first + at.n {
                    let Some(pm) = self.page_mut(p, r, i) else { continue };
                    let slot = pm.slot.take();
                    if !pm.pfn {
                        pm.pte = Pte::Absent;
                    }
                    pm.mswap = false;
                    // Zap leaves a uffd-wp marker in file-backed memory only.
                    if pm.base == Base::Zero {
                        pm.wp = false;
                    }
                    if let Some(o) = slot {
                        self.unmap_obj(o);
                    }
                }
                Expect::Ok
            }
            Op::Hugepage { p, r, at, on } => {
                if !self.span_mapped(p, r, at) {
                    return Expect::Refused;
                }
                for i in at.first..at.first + at.n {
                    let pm = self.page_mut(p, r, i).unwrap();
                    // Only private anonymous memory has folios to size;
                    // `nohugepage` limits later faults but what is mapped stays.
                    if on && !pm.pfn && pm.base == Base::Zero {
                        pm.thp = true;
                    }
                }
                Expect::Ok
            }
            Op::Write { p, r, at, byte } => self.access(p, r, at, Access::Write(Some(byte))),
            Op::Touch { p, r, at, write, .. } => {
                self.access(p, r, at, if write { Access::Write(None) } else { Access::Read(None) })
            }
            Op::Check { p, r, at, byte } => self.access(p, r, at, Access::Read(Some(byte))),
            Op::ExpectFault { p, r, page, write } => {
                if !self.region_exists(p, r) || !self.span_ok(p, r, Span { first: page, n: 1 }) {
                    return Expect::Refused;
                }
                let at = Span { first: page, n: 1 };
                match self.access(p, r, at, if write { Access::Write(None) } else { Access::Read(None) }) {
                    Expect::Refused => Expect::Pass,
                    _ => Expect::Fail,
                }
            }
            Op::Pin { p, h, r, at, write, longterm, .. } => self.gup(p, h, r, at, Gup { pin: true, write, longterm }),
            Op::Ref { p, h, r, at } => self.gup(p, h, r, at, Gup { pin: false, write: false, longterm: false }),
            Op::CheckPin { h, byte } => {
                let Some(hd) = &self.handles[h as usize] else { return Expect::Refused };
                if hd.objs.iter().all(|&o| self.objs[o as usize].byte == byte) { Expect::Pass } else { Expect::Fail }
            }
            Op::Unpin { h } => {
                let Some(hd) = self.handles[h as usize].take() else { return Expect::Refused };
                for o in hd.objs {
                    let ob = &mut self.objs[o as usize];
                    if hd.pin {
                        ob.pins -= 1;
                    } else {
                        ob.refs -= 1;
                    }
                    self.maybe_free(o);
                }
                Expect::Ok
            }
            Op::Query { p, r, at, q } => {
                if !self.region_exists(p, r) || !self.span_ok(p, r, at) {
                    return Expect::Refused;
                }
                for i in at.first..at.first + at.n {
                    let k = self.known(p, r, i);
                    for (want, have) in [
                        (q.present, k.present),
                        (q.writable, k.writable),
                        (q.swap, k.swap),
                        (q.marker, k.marker),
                        (q.uffd_wp, k.uffd_wp),
                    ] {
                        match (want, have) {
                            (None, _) => {}
                            (Some(a), Some(b)) if a == b => {}
                            (Some(_), Some(_)) => return Expect::Fail,
                            // Asked what the model cannot know: the generator never does.
                            (Some(_), None) => return Expect::Fail,
                        }
                    }
                }
                Expect::Pass
            }
            Op::Pageout { p, r, at } => self.pageout(p, r, at),
            Op::Migrate { p, r, at } => {
                if !self.region_exists(p, r) || !self.span_ok(p, r, at) {
                    return Expect::Refused;
                }
                if self.migrate_stays(p, r, at) { Expect::Refused } else { Expect::Ok }
            }
            Op::UffdRegister { p, r, at, fork_events } => {
                if !self.span_mapped(p, r, at) || self.span_pages(p, r, at).any(|pm| pm.pfn) {
                    return Expect::Refused;
                }
                let pr = self.procs[p as usize].as_ref().unwrap();
                let registered = pr.regions.iter().flatten().flat_map(|g| g.pages.iter().flatten()).any(|pm| pm.reg);
                if pr.uffd.is_some_and(|f| f != fork_events) && registered {
                    return Expect::Refused;
                }
                self.procs[p as usize].as_mut().unwrap().uffd = Some(fork_events);
                for i in at.first..at.first + at.n {
                    self.page_mut(p, r, i).unwrap().reg = true;
                }
                Expect::Ok
            }
            Op::UffdWp { p, r, at, on } => {
                if !self.span_mapped(p, r, at) || self.span_pages(p, r, at).any(|pm| !pm.reg) {
                    return Expect::Refused;
                }
                for i in at.first..at.first + at.n {
                    let pm = self.page_mut(p, r, i).unwrap();
                    pm.wp = on;
                    // Protecting makes present entries read-only; unprotecting
                    // leaves them so (the next write faults).
                    if on && let Pte::Present(_) = pm.pte {
                        pm.pte = Pte::Present(Some(false));
                    }
                }
                Expect::Ok
            }
            Op::UffdUnregister { p, r, at } => {
                if !self.span_mapped(p, r, at) {
                    return Expect::Refused;
                }
                for i in at.first..at.first + at.n {
                    let pm = self.page_mut(p, r, i).unwrap();
                    pm.reg = false;
                    pm.wp = false;
                }
                Expect::Ok
            }
            Op::UffdEvents { p, n } => {
                let Some(pr) = self.procs[p as usize].as_mut() else { return Expect::Refused };
                let got = core::mem::take(&mut pr.events);
                if got == n { Expect::Pass } else { Expect::Fail }
            }
            Op::Invariants => Expect::Pass,
        }
    }

    /// The mapped pages of a span.
    fn span_pages(&self, p: u8, r: u8, at: Span) -> impl Iterator<Item = &PageM> {
        (at.first..at.first + at.n).filter_map(move |i| self.page(p, r, i))
    }

    /// What a `query` of page `i` may assert (None: not known).
    fn known(&self, p: u8, r: u8, i: u16) -> QueryFlags {
        let Some(pm) = self.page(p, r, i) else {
            let no = Some(false);
            return QueryFlags { present: no, writable: no, swap: no, marker: no, uffd_wp: no };
        };
        let (present, writable, swap, marker) = match pm.pte {
            Pte::Absent => (Some(false), Some(false), Some(false), Some(pm.wp)),
            Pte::Present(w) => (Some(true), w, Some(false), Some(false)),
            Pte::Swap => (Some(false), Some(false), Some(true), Some(false)),
            Pte::Unknown => (None, None, None, None),
        };
        QueryFlags { present, writable, swap, marker, uffd_wp: Some(pm.wp) }
    }

    /// `madvise pageout`: private pages only this mapping holds go to swap
    /// (a large folio may or may not: the range may cut it); page-cache
    /// pages are unmapped (a protected one leaves its marker); the zero
    /// page stays.
    fn pageout(&mut self, p: u8, r: u8, at: Span) -> Expect {
        if !self.region_exists(p, r) || !self.span_ok(p, r, at) {
            return Expect::Refused;
        }
        for i in at.first..at.first + at.n {
            let Some(pm) = self.page(p, r, i).copied() else { continue };
            if pm.pfn {
                continue;
            }
            let pte = match pm.slot {
                _ if pm.shared => Pte::Absent,
                None if pm.base == Base::Zero => pm.pte,
                None => Pte::Absent,
                Some(_) if pm.thp => Pte::Unknown,
                Some(o) => {
                    let ob = &self.objs[o as usize];
                    let alone = ob.maps == 1 && ob.pins == 0 && ob.refs == 0;
                    if alone && matches!(pm.pte, Pte::Present(_)) { Pte::Swap } else { pm.pte }
                }
            };
            let q = self.page_mut(p, r, i).unwrap();
            q.pte = pte;
            q.mswap |= q.slot.is_some();
        }
        Expect::Ok
    }

    /// Whether `migrate` leaves a page of the span where it was: one mapped
    /// there that a pin or a GUP reference holds (not the zero page).
    fn migrate_stays(&self, p: u8, r: u8, at: Span) -> bool {
        self.span_pages(p, r, at).any(|pm| {
            let o = self.shown(pm);
            let ob = &self.objs[o as usize];
            !pm.pfn && o != ZERO && matches!(pm.pte, Pte::Present(_)) && (ob.pins > 0 || ob.refs > 0)
        })
    }

    /// Whether the model cannot tell what `migrate` over the span does: a
    /// page mapped there may be in the swap cache (another entry for it is
    /// in swap), which the kernel does not migrate.
    pub fn migrate_uncertain(&self, p: u8, r: u8, at: Span) -> bool {
        let mapped: Vec<ObjId> = self
            .span_pages(p, r, at)
            .filter(|pm| !matches!(pm.pte, Pte::Absent | Pte::Swap))
            .filter_map(|pm| pm.slot)
            .collect();
        if mapped.is_empty() {
            return false;
        }
        self.procs
            .iter()
            .flatten()
            .flat_map(|pr| pr.regions.iter().flatten())
            .flat_map(|g| g.pages.iter().flatten())
            .any(|pm| pm.mswap && pm.slot.is_some_and(|o| mapped.contains(&o)))
    }

    /// The uffd-wp events of `p` since the last check.
    pub fn uffd_events(&self, p: u8) -> u32 {
        self.procs[p as usize].as_ref().map_or(0, |pr| pr.events)
    }

    /// Whether process `p` has a userfaultfd context (and so an event count
    /// worth checking).
    pub fn has_uffd(&self, p: u8) -> bool {
        self.procs[p as usize].as_ref().is_some_and(|pr| pr.uffd.is_some())
    }

    /// Whether process `p` has a page registered for uffd-wp, and with which
    /// context features.
    pub fn uffd_registered(&self, p: u8) -> Option<bool> {
        let pr = self.procs[p as usize].as_ref()?;
        pr.regions.iter().flatten().flat_map(|g| g.pages.iter().flatten()).any(|pm| pm.reg).then_some(pr.uffd?)
    }

    /// A write to page `i` that is write-protected raises an event, which
    /// the script model resolves by unprotecting the page.
    fn wp_fault(&mut self, p: u8, r: u8, i: u16) {
        let pm = self.page_mut(p, r, i).unwrap();
        if pm.wp {
            pm.wp = false;
            self.procs[p as usize].as_mut().unwrap().events += 1;
        }
    }

    /// The span lies inside the region (the console refuses it otherwise).
    fn span_ok(&self, p: u8, r: u8, at: Span) -> bool {
        let Some(reg) = self.procs[p as usize].as_ref().and_then(|pr| pr.regions[r as usize].as_ref()) else {
            return false;
        };
        at.n > 0 && (at.first as usize + at.n as usize) <= reg.pages.len()
    }

    /// Inside the region and every page still mapped.
    fn span_mapped(&self, p: u8, r: u8, at: Span) -> bool {
        self.span_ok(p, r, at) && (at.first..at.first + at.n).all(|i| self.page(p, r, i).is_some())
    }

    fn mmap(&mut self, p: u8, r: u8, m: MapSpec) -> Expect {
        let Some(pr) = &self.procs[p as usize] else { return Expect::Refused };
        if pr.regions[r as usize].is_some() || m.pages == 0 {
            return Expect::Refused;
        }
        // What backs page 0; page i is the i-th one on from it.
        let (base, pfn) = match m.backing {
            Backing::Memfd(f) => {
                if m.thp != Thp::Never {
                    return Expect::Refused;
                }
                // The file grows to fit (zero-filled).
                while self.files[f as usize].len() < m.pages as usize {
                    let o = self.new_obj(0, false);
                    self.files[f as usize].push(o);
                }
                (Base::File(f as u16, 0), false)
            }
            Backing::Anon if m.shared => {
                if m.thp != Thp::Never {
                    return Expect::Refused;
                }
                let objs = (0..m.pages).map(|_| self.new_obj(0, false)).collect();
                self.files.push(objs);
                (Base::File((self.files.len() - 1) as u16, 0), false)
            }
            Backing::Anon => (Base::Zero, false),
            Backing::Pfn(first) => {
                if first as usize + m.pages as usize > PFN_PAGES {
                    return Expect::Refused;
                }
                (Base::Pfn(first as u16), true)
            }
        };
        let base_of = |i: u16| match base {
            Base::Zero => Base::Zero,
            Base::File(f, _) => Base::File(f, i),
            Base::Pfn(first) => Base::Pfn(first + i),
        };
        let thp = m.thp != Thp::Never && !pfn && !m.shared && m.backing == Backing::Anon;
        // remap_pfn_range maps every frame at mmap time; a private one read-only.
        let pte = if pfn { Pte::Present(Some(m.shared && m.prot == Prot::Rw)) } else { Pte::Absent };
        let pages = (0..m.pages)
            .map(|i| {
                Some(PageM {
                    base: base_of(i),
                    shared: m.shared,
                    pfn,
                    prot: m.prot,
                    thp,
                    slot: None,
                    pte,
                    reg: false,
                    wp: false,
                    mswap: false,
                })
            })
            .collect();
        self.procs[p as usize].as_mut().unwrap().regions[r as usize] = Some(Region { pages });
        Expect::Ok
    }

    fn fork(&mut self, p: u8, c: u8) -> Expect {
        if self.procs[p as usize].is_none() || self.procs[c as usize].is_some() || p == c {
            return Expect::Refused;
        }
        let wp = |pte: Pte| match pte {
            Pte::Present(_) => Pte::Present(Some(false)),
            other => other,
        };
        let mut child = self.procs[p as usize].clone().unwrap();
        // Without fork events the child has no registration, no uffd-wp
        // bits and no markers; with them it keeps all three, and has a
        // context of its own.
        let fork_events = child.uffd == Some(true);
        child.events = 0;
        if !fork_events {
            child.uffd = None;
        }
        for r in 0..MAX_REGIONS {
            let Some(reg) = child.regions[r].as_mut() else { continue };
            for i in 0..reg.pages.len() {
                let Some(cp) = reg.pages[i].as_mut() else { continue };
                if !fork_events {
                    cp.reg = false;
                    cp.wp = false;
                }
                if cp.shared && !cp.pfn {
                    // A shared file mapping's entries are not copied, unless
                    // the child keeps uffd-wp (Linux `vma_needs_copy`).
                    cp.pte = match cp.pte {
                        Pte::Present(_) if cp.reg => Pte::Present(None),
                        Pte::Unknown if cp.reg => Pte::Unknown,
                        _ => Pte::Absent,
                    };
                    if cp.reg {
                        // pagelab's copy write-protects the parent's
                        // entries there too (Linux leaves shared ones
                        // writable): either way is correct.
                        let pp = self.procs[p as usize].as_mut().unwrap().regions[r].as_mut().unwrap().pages[i]
                            .as_mut()
                            .unwrap();
                        if let Pte::Present(_) = pp.pte {
                            pp.pte = Pte::Present(None);
                        }
                    }
                    continue;
                }
                if cp.shared {
                    continue; // PFN entries are copied as they are
                }
                let pinned_excl =
                    cp.slot.is_some_and(|o| self.objs[o as usize].pins > 0 && self.objs[o as usize].exclusive);
                if pinned_excl {
                    // A pinned exclusive page: the child gets its copy now,
                    // the parent keeps its page and its entry.
                    let b = self.objs[cp.slot.unwrap() as usize].byte;
                    let n = self.new_obj(b, true);
                    self.objs[n as usize].maps = 1;
                    cp.slot = Some(n);
                    if let Pte::Present(_) = cp.pte {
                        cp.pte = Pte::Present(None);
                    }
                    continue;
                }
                if let Some(o) = cp.slot {
                    let ob = &mut self.objs[o as usize];
                    ob.exclusive = false;
                    ob.maps += 1;
                }
                cp.pte = wp(cp.pte);
                let pp =
                    self.procs[p as usize].as_mut().unwrap().regions[r].as_mut().unwrap().pages[i].as_mut().unwrap();
                pp.pte = wp(pp.pte);
            }
        }
        self.procs[c as usize] = Some(child);
        Expect::Ok
    }

    /// A write fault's (or unshare's) outcome for a private page: the
    /// exclusive object now mapped there.
    fn make_exclusive(&mut self, p: u8, r: u8, i: u16) -> ObjId {
        let pm = *self.page(p, r, i).unwrap();
        let o = match pm.slot {
            Some(o) if self.objs[o as usize].exclusive => o,
            Some(o)
                if {
                    let ob = &self.objs[o as usize];
                    ob.maps == 1 && ob.pins == 0 && ob.refs == 0
                } =>
            {
                self.objs[o as usize].exclusive = true;
                o
            }
            Some(o) => {
                let b = self.objs[o as usize].byte;
                let n = self.new_obj(b, true);
                self.objs[n as usize].maps = 1;
                self.unmap_obj(o);
                n
            }
            None => {
                let b = self.objs[self.base_obj(pm.base) as usize].byte;
                let n = self.new_obj(b, true);
                self.objs[n as usize].maps = 1;
                n
            }
        };
        self.page_mut(p, r, i).unwrap().slot = Some(o);
        o
    }

    /// A fault in a region with large folios may fill pages around it.
    fn thp_neighbours(&mut self, p: u8, r: u8) {
        let reg = self.procs[p as usize].as_mut().unwrap().regions[r as usize].as_mut().unwrap();
        for pm in reg.pages.iter_mut().flatten() {
            if pm.thp && pm.pte == Pte::Absent {
                pm.pte = Pte::Unknown;
            }
        }
    }

    /// EL0 accesses page by page, in order, as the agent makes them: the
    /// first that cannot be resolved ends the command (refused); a check
    /// that reads another byte fails there.
    fn access(&mut self, p: u8, r: u8, at: Span, a: Access) -> Expect {
        if !self.region_exists(p, r) || !self.span_ok(p, r, at) {
            return Expect::Refused;
        }
        for i in at.first..at.first + at.n {
            let Some(pm) = self.page(p, r, i).copied() else { return Expect::Refused };
            let write = matches!(a, Access::Write(_));
            let allowed = match pm.prot {
                Prot::Rw => true,
                Prot::R => !write,
                Prot::None => false,
            };
            if !allowed {
                return Expect::Refused;
            }
            let shown = self.shown(&pm);
            self.page_mut(p, r, i).unwrap().mswap = false;
            match a {
                Access::Read(want) => {
                    if pm.pte == Pte::Absent {
                        // A private read maps the zero page or the file page read-only.
                        self.page_mut(p, r, i).unwrap().pte =
                            Pte::Present(if pm.shared || pm.thp { None } else { Some(false) });
                    } else if pm.pte == Pte::Swap {
                        // Swap-in may map an exclusive page writable at once.
                        self.page_mut(p, r, i).unwrap().pte = Pte::Present(None);
                    }
                    if pm.thp {
                        self.thp_neighbours(p, r);
                    }
                    if want.is_some_and(|b| b != self.objs[shown as usize].byte) {
                        return Expect::Fail;
                    }
                }
                Access::Write(b) => {
                    self.wp_fault(p, r, i);
                    let b = b.unwrap_or(self.objs[shown as usize].byte);
                    let o = if pm.shared { shown } else { self.make_exclusive(p, r, i) };
                    self.objs[o as usize].byte = b;
                    self.page_mut(p, r, i).unwrap().pte = Pte::Present(Some(true));
                    if pm.thp {
                        self.thp_neighbours(p, r);
                    }
                }
            }
        }
        if matches!(a, Access::Read(Some(_))) { Expect::Pass } else { Expect::Ok }
    }

    /// get_user_pages over the span: all or nothing for the handle, but
    /// the faults and unshares made for pages before a refused one stay.
    fn gup(&mut self, p: u8, h: u8, r: u8, at: Span, g: Gup) -> Expect {
        if !self.region_exists(p, r) || !self.span_ok(p, r, at) || self.handles[h as usize].is_some() {
            return Expect::Refused;
        }
        let mut took = Vec::new();
        for i in at.first..at.first + at.n {
            let ok = match self.page(p, r, i) {
                None => false,
                Some(pm) if pm.pfn => false,
                Some(pm) => match pm.prot {
                    Prot::Rw => true,
                    Prot::R => !g.write,
                    Prot::None => false,
                },
            };
            if !ok {
                return Expect::Refused;
            }
            if g.write {
                self.wp_fault(p, r, i);
            }
            self.page_mut(p, r, i).unwrap().mswap = false;
            let pm = *self.page(p, r, i).unwrap();
            let o = if pm.shared {
                self.shown(&pm)
            } else if g.write {
                self.make_exclusive(p, r, i)
            } else if g.pin {
                match pm.slot {
                    // Unshare what COW could replace under the pin.
                    Some(_) => self.make_exclusive(p, r, i),
                    None if g.longterm => self.make_exclusive(p, r, i),
                    None => self.base_obj(pm.base),
                }
            } else {
                self.shown(&pm)
            };
            // Pins may fault, COW or unshare: writable then is not known. A
            // reference only faults in what is absent, read-only if private.
            let pte = &mut self.page_mut(p, r, i).unwrap().pte;
            *pte = match *pte {
                Pte::Present(w) if !g.pin => Pte::Present(w),
                Pte::Absent if !g.pin && !pm.shared => Pte::Present(Some(false)),
                _ => Pte::Present(None),
            };
            took.push(o);
        }
        for &o in &took {
            let ob = &mut self.objs[o as usize];
            if g.pin {
                ob.pins += 1;
            } else {
                ob.refs += 1;
            }
        }
        self.handles[h as usize] = Some(Handle { objs: took, pin: g.pin });
        Expect::Ok
    }

    // ---- assertion lines

    /// `query` lines for what is known of the entries of pages `at` of
    /// region `r` of `p`, then `check` lines that read back the readable
    /// ones (runs of equal bytes in one line). Reading has effects (read
    /// faults), which the lines apply when they run.
    pub fn span_assertions(&self, p: u8, r: u8, at: Span, out: &mut Vec<Op>) {
        let Some(reg) = self.procs[p as usize].as_ref().and_then(|pr| pr.regions[r as usize].as_ref()) else {
            return;
        };
        let end = (at.first as usize + at.n as usize).min(reg.pages.len()) as u16;
        // Queries first: reads change what is present.
        let known = |i: u16| self.known(p, r, i);
        let mut i = at.first;
        while i < end {
            let k = known(i);
            let mut j = i + 1;
            while j < end && known(j) == k {
                j += 1;
            }
            if k.any() {
                out.push(Op::Query { p, r, at: Span { first: i, n: j - i }, q: k });
            }
            i = j;
        }
        let readable = |i: u16| reg.pages[i as usize].as_ref().filter(|pm| pm.prot != Prot::None);
        let mut i = at.first;
        while i < end {
            let Some(pm) = readable(i) else {
                i += 1;
                continue;
            };
            let b = self.objs[self.shown(pm) as usize].byte;
            let mut j = i + 1;
            while j < end && readable(j).is_some_and(|q| self.objs[self.shown(q) as usize].byte == b) {
                j += 1;
            }
            out.push(Op::Check { p, r, at: Span { first: i, n: j - i }, byte: b });
            i = j;
        }
    }

    /// [`Model::span_assertions`] over a whole region.
    pub fn region_assertions(&self, p: u8, r: u8, out: &mut Vec<Op>) {
        let n = self.procs[p as usize]
            .as_ref()
            .and_then(|pr| pr.regions[r as usize].as_ref())
            .map_or(0, |reg| reg.pages.len());
        if n > 0 {
            self.span_assertions(p, r, Span { first: 0, n: n as u16 }, out);
        }
    }

    /// Lines that check what `op` (just applied) changed: the pages it
    /// touched, and the handles when contents or owners may have moved.
    pub fn assertions_after(&self, op: &Op, out: &mut Vec<Op>) {
        match *op {
            Op::Fork { c, .. } => {
                for r in self.regions(c) {
                    self.region_assertions(c, r, out);
                }
            }
            Op::Mmap { p, r, .. } => self.region_assertions(p, r, out),
            Op::Munmap { p, r, at }
            | Op::Mprotect { p, r, at, .. }
            | Op::Dontneed { p, r, at }
            | Op::Write { p, r, at, .. }
            | Op::Touch { p, r, at, .. }
            | Op::Pin { p, r, at, .. }
            | Op::Ref { p, r, at, .. }
            | Op::Pageout { p, r, at }
            | Op::Migrate { p, r, at }
            | Op::UffdRegister { p, r, at, .. }
            | Op::UffdWp { p, r, at, .. }
            | Op::UffdUnregister { p, r, at } => {
                self.span_assertions(p, r, at, out);
                if let Op::Munmap { .. } | Op::Mprotect { .. } = *op
                    && self.region_exists(p, r)
                    && self.span_ok(p, r, at)
                {
                    // The first page of the range must fault as the model says.
                    let pm = self.page(p, r, at.first);
                    if pm.is_none_or(|pm| pm.prot != Prot::Rw) {
                        out.push(Op::ExpectFault { p, r, page: at.first, write: true });
                    }
                }
            }
            _ => {}
        }
        if matches!(
            op,
            Op::Write { .. }
                | Op::Touch { .. }
                | Op::Fork { .. }
                | Op::Pin { .. }
                | Op::Ref { .. }
                | Op::Pageout { .. }
                | Op::Migrate { .. }
        ) {
            for h in self.live_handles() {
                if let Some(b) = self.handle_byte(h) {
                    out.push(Op::CheckPin { h, byte: b });
                }
            }
        }
        // Events come only from registered pages: elsewhere the full check's
        // count is enough.
        if let Op::Write { p, r, at, .. } | Op::Touch { p, r, at, .. } | Op::Pin { p, r, at, .. } = *op
            && (self.uffd_events(p) > 0 || self.region_exists(p, r) && self.span_pages(p, r, at).any(|pm| pm.reg))
        {
            out.push(Op::UffdEvents { p, n: self.uffd_events(p) });
        }
    }

    /// Every page of every process, and every handle.
    pub fn full_check(&self, out: &mut Vec<Op>) {
        for p in self.live_procs() {
            for r in self.regions(p) {
                self.region_assertions(p, r, out);
            }
        }
        for h in self.live_handles() {
            if let Some(b) = self.handle_byte(h) {
                out.push(Op::CheckPin { h, byte: b });
            }
        }
        for p in self.live_procs() {
            if self.has_uffd(p) {
                out.push(Op::UffdEvents { p, n: self.procs[p as usize].as_ref().unwrap().events });
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Access {
    /// A read; with the byte every byte must be (a check).
    Read(Option<u8>),
    /// A write of this byte, or of the byte already there (touch).
    Write(Option<u8>),
}

#[derive(Clone, Copy)]
struct Gup {
    pin: bool,
    write: bool,
    longterm: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    fn run(m: &mut Model, ops: &[(Op, Expect)]) {
        for (i, (op, want)) in ops.iter().enumerate() {
            assert_eq!(m.apply(op), *want, "op {i}: {op:?}");
        }
    }

    const A: MapSpec = MapSpec { pages: 4, backing: Backing::Anon, shared: false, prot: Prot::Rw, thp: Thp::Never };
    const S1: Span = Span { first: 0, n: 1 };
    const ALL: Span = Span { first: 0, n: 4 };

    #[test]
    fn fork_is_copy_on_write() {
        let mut m = Model::new();
        run(
            &mut m,
            &[
                (Op::Spawn { p: 0 }, Expect::Ok),
                (Op::Mmap { p: 0, r: 0, m: A }, Expect::Ok),
                (Op::Write { p: 0, r: 0, at: ALL, byte: 5 }, Expect::Ok),
                (Op::Fork { p: 0, c: 1 }, Expect::Ok),
                (
                    Op::Query {
                        p: 0,
                        r: 0,
                        at: ALL,
                        q: QueryFlags { present: Some(true), writable: Some(false), ..Default::default() },
                    },
                    Expect::Pass,
                ),
                (Op::Write { p: 1, r: 0, at: S1, byte: 6 }, Expect::Ok),
                (Op::Check { p: 0, r: 0, at: S1, byte: 5 }, Expect::Pass),
                (Op::Check { p: 1, r: 0, at: S1, byte: 6 }, Expect::Pass),
                (Op::Check { p: 1, r: 0, at: S1, byte: 5 }, Expect::Fail),
                (Op::Fork { p: 0, c: 1 }, Expect::Refused),
                (Op::Exit { p: 1 }, Expect::Ok),
                (Op::Exit { p: 1 }, Expect::Refused),
            ],
        );
    }

    #[test]
    fn pins_and_refs_keep_their_pages() {
        let mut m = Model::new();
        run(
            &mut m,
            &[
                (Op::Spawn { p: 0 }, Expect::Ok),
                (Op::Mmap { p: 0, r: 0, m: A }, Expect::Ok),
                (Op::Write { p: 0, r: 0, at: ALL, byte: 1 }, Expect::Ok),
                (Op::Ref { p: 0, h: 0, r: 0, at: S1 }, Expect::Ok),
                (
                    Op::Pin {
                        p: 0,
                        h: 1,
                        r: 0,
                        at: Span { first: 1, n: 1 },
                        write: false,
                        longterm: false,
                        fast: false,
                    },
                    Expect::Ok,
                ),
                (Op::Fork { p: 0, c: 1 }, Expect::Ok),
                // The referenced page is COW-shared now: the write copies it.
                (Op::Write { p: 0, r: 0, at: Span { first: 0, n: 2 }, byte: 2 }, Expect::Ok),
                (Op::CheckPin { h: 0, byte: 1 }, Expect::Pass),
                // The pinned one stayed with the parent (the child got a copy).
                (Op::CheckPin { h: 1, byte: 2 }, Expect::Pass),
                (Op::Check { p: 1, r: 0, at: Span { first: 0, n: 2 }, byte: 1 }, Expect::Pass),
                (Op::Exit { p: 0 }, Expect::Ok),
                (Op::CheckPin { h: 1, byte: 2 }, Expect::Pass),
                (Op::Unpin { h: 1 }, Expect::Ok),
                (Op::Unpin { h: 1 }, Expect::Refused),
            ],
        );
    }

    #[test]
    fn shared_memory_and_dontneed() {
        let mut m = Model::new();
        let f = MapSpec { backing: Backing::Memfd(0), shared: true, ..A };
        let fp = MapSpec { backing: Backing::Memfd(0), ..A };
        run(
            &mut m,
            &[
                (Op::Spawn { p: 0 }, Expect::Ok),
                (Op::Mmap { p: 0, r: 0, m: f }, Expect::Ok),
                (Op::Mmap { p: 0, r: 1, m: fp }, Expect::Ok),
                (Op::Write { p: 0, r: 0, at: ALL, byte: 7 }, Expect::Ok),
                (Op::Check { p: 0, r: 1, at: ALL, byte: 7 }, Expect::Pass),
                (Op::Write { p: 0, r: 1, at: S1, byte: 8 }, Expect::Ok),
                (Op::Check { p: 0, r: 0, at: S1, byte: 7 }, Expect::Pass),
                (Op::Dontneed { p: 0, r: 1, at: ALL }, Expect::Ok),
                (Op::Check { p: 0, r: 1, at: S1, byte: 7 }, Expect::Pass),
                (Op::Dontneed { p: 0, r: 0, at: ALL }, Expect::Ok),
                (Op::Check { p: 0, r: 0, at: ALL, byte: 7 }, Expect::Pass),
                (Op::Mmap { p: 0, r: 2, m: A }, Expect::Ok),
                (Op::Write { p: 0, r: 2, at: ALL, byte: 9 }, Expect::Ok),
                (Op::Dontneed { p: 0, r: 2, at: ALL }, Expect::Ok),
                (Op::Check { p: 0, r: 2, at: ALL, byte: 0 }, Expect::Pass),
            ],
        );
    }

    #[test]
    fn refusals_leave_partial_writes() {
        let mut m = Model::new();
        run(
            &mut m,
            &[
                (Op::Spawn { p: 0 }, Expect::Ok),
                (Op::Mmap { p: 0, r: 0, m: A }, Expect::Ok),
                (Op::Mprotect { p: 0, r: 0, at: Span { first: 2, n: 1 }, prot: Prot::R }, Expect::Ok),
                (Op::Write { p: 0, r: 0, at: ALL, byte: 3 }, Expect::Refused),
                (Op::Check { p: 0, r: 0, at: Span { first: 0, n: 2 }, byte: 3 }, Expect::Pass),
                (Op::Check { p: 0, r: 0, at: Span { first: 2, n: 2 }, byte: 0 }, Expect::Pass),
                (Op::ExpectFault { p: 0, r: 0, page: 2, write: true }, Expect::Pass),
                (Op::ExpectFault { p: 0, r: 0, page: 2, write: false }, Expect::Fail),
                (Op::Munmap { p: 0, r: 0, at: Span { first: 1, n: 1 } }, Expect::Ok),
                (Op::Mprotect { p: 0, r: 0, at: ALL, prot: Prot::Rw }, Expect::Refused),
                (Op::Munmap { p: 0, r: 0, at: ALL }, Expect::Ok),
                (Op::Munmap { p: 0, r: 0, at: ALL }, Expect::Refused),
            ],
        );
    }

    fn q(present: Option<bool>, swap: Option<bool>, marker: Option<bool>, uffd_wp: Option<bool>) -> QueryFlags {
        QueryFlags { present, writable: None, swap, marker, uffd_wp }
    }

    #[test]
    fn pageout_and_migrate_keep_contents() {
        let mut m = Model::new();
        let p1 = Span { first: 1, n: 1 };
        run(
            &mut m,
            &[
                (Op::Spawn { p: 0 }, Expect::Ok),
                (Op::Mmap { p: 0, r: 0, m: A }, Expect::Ok),
                (Op::Write { p: 0, r: 0, at: ALL, byte: 5 }, Expect::Ok),
                (Op::Fork { p: 0, c: 1 }, Expect::Ok),
                // Page 0 is the parent's alone again; pages 1..3 are shared.
                (Op::Write { p: 0, r: 0, at: S1, byte: 6 }, Expect::Ok),
                (Op::Pageout { p: 0, r: 0, at: ALL }, Expect::Ok),
                (Op::Query { p: 0, r: 0, at: S1, q: q(Some(false), Some(true), Some(false), None) }, Expect::Pass),
                (Op::Query { p: 0, r: 0, at: p1, q: q(Some(true), Some(false), None, None) }, Expect::Pass),
                (Op::Query { p: 0, r: 0, at: S1, q: q(Some(true), None, None, None) }, Expect::Fail),
                (Op::Check { p: 0, r: 0, at: S1, byte: 6 }, Expect::Pass),
                (Op::Query { p: 0, r: 0, at: S1, q: q(Some(true), Some(false), None, None) }, Expect::Pass),
                (Op::Check { p: 1, r: 0, at: ALL, byte: 5 }, Expect::Pass),
                // A pinned page stays (and the command fails); the rest moves.
                (Op::Pin { p: 0, h: 0, r: 0, at: S1, write: false, longterm: false, fast: false }, Expect::Ok),
                (Op::Migrate { p: 0, r: 0, at: ALL }, Expect::Refused),
                (Op::Migrate { p: 0, r: 0, at: Span { first: 1, n: 3 } }, Expect::Ok),
                (Op::CheckPin { h: 0, byte: 6 }, Expect::Pass),
                (Op::Unpin { h: 0 }, Expect::Ok),
                (Op::Migrate { p: 0, r: 0, at: ALL }, Expect::Ok),
                (Op::Check { p: 0, r: 0, at: S1, byte: 6 }, Expect::Pass),
            ],
        );
        // A page another process still has in swap may be in the swap
        // cache: the generator leaves migrate alone there.
        let mut m = Model::new();
        run(
            &mut m,
            &[
                (Op::Spawn { p: 0 }, Expect::Ok),
                (Op::Mmap { p: 0, r: 0, m: A }, Expect::Ok),
                (Op::Write { p: 0, r: 0, at: ALL, byte: 5 }, Expect::Ok),
                (Op::Pageout { p: 0, r: 0, at: ALL }, Expect::Ok),
                (Op::Fork { p: 0, c: 1 }, Expect::Ok),
                (Op::Query { p: 1, r: 0, at: ALL, q: q(Some(false), Some(true), None, None) }, Expect::Pass),
                (Op::Check { p: 1, r: 0, at: S1, byte: 5 }, Expect::Pass),
            ],
        );
        assert!(m.migrate_uncertain(1, 0, S1));
        assert!(!m.migrate_uncertain(1, 0, Span { first: 1, n: 1 }), "nothing is mapped there");
    }

    #[test]
    fn uffd_wp_markers_events_and_fork() {
        let mut m = Model::new();
        let f = MapSpec { backing: Backing::Memfd(0), shared: true, ..A };
        let reg = |p, r, fork_events| Op::UffdRegister { p, r, at: ALL, fork_events };
        let wp = |p, r, on| Op::UffdWp { p, r, at: ALL, on };
        run(
            &mut m,
            &[
                (Op::Spawn { p: 0 }, Expect::Ok),
                (Op::Mmap { p: 0, r: 0, m: A }, Expect::Ok),
                (Op::Mmap { p: 0, r: 1, m: f }, Expect::Ok),
                (wp(0, 0, true), Expect::Refused),
                (Op::UffdEvents { p: 0, n: 0 }, Expect::Pass),
                (reg(0, 0, false), Expect::Ok),
                (reg(0, 1, true), Expect::Refused),
                (reg(0, 1, false), Expect::Ok),
                (Op::Write { p: 0, r: 1, at: S1, byte: 3 }, Expect::Ok),
                (wp(0, 0, true), Expect::Ok),
                (wp(0, 1, true), Expect::Ok),
                // Unpopulated pages get markers.
                (Op::Query { p: 0, r: 0, at: ALL, q: q(Some(false), None, Some(true), Some(true)) }, Expect::Pass),
                (Op::Query { p: 0, r: 1, at: S1, q: q(Some(true), None, Some(false), Some(true)) }, Expect::Pass),
                // A read raises no event; a write raises one per protected page.
                (Op::Check { p: 0, r: 0, at: ALL, byte: 0 }, Expect::Pass),
                (Op::Write { p: 0, r: 0, at: Span { first: 0, n: 2 }, byte: 4 }, Expect::Ok),
                (Op::Write { p: 0, r: 0, at: S1, byte: 4 }, Expect::Ok),
                (Op::UffdEvents { p: 0, n: 1 }, Expect::Fail),
                (Op::UffdEvents { p: 0, n: 0 }, Expect::Pass),
                (Op::Query { p: 0, r: 0, at: S1, q: q(Some(true), None, None, Some(false)) }, Expect::Pass),
                // Zap drops the protection of private anonymous memory,
                // keeps it (a marker) in file-backed memory.
                (Op::Dontneed { p: 0, r: 0, at: ALL }, Expect::Ok),
                (Op::Dontneed { p: 0, r: 1, at: ALL }, Expect::Ok),
                (Op::Query { p: 0, r: 0, at: ALL, q: q(None, None, Some(false), Some(false)) }, Expect::Pass),
                (Op::Query { p: 0, r: 1, at: ALL, q: q(Some(false), None, Some(true), Some(true)) }, Expect::Pass),
                // So does pageout; and the data is the file's.
                (Op::Pageout { p: 0, r: 1, at: ALL }, Expect::Ok),
                (Op::Query { p: 0, r: 1, at: ALL, q: q(Some(false), None, Some(true), Some(true)) }, Expect::Pass),
                (Op::Check { p: 0, r: 1, at: S1, byte: 3 }, Expect::Pass),
                // Without fork events the child has none of it.
                (Op::Fork { p: 0, c: 1 }, Expect::Ok),
                (Op::Query { p: 1, r: 1, at: ALL, q: q(None, None, Some(false), Some(false)) }, Expect::Pass),
                (wp(1, 1, true), Expect::Refused),
                (Op::Write { p: 1, r: 1, at: ALL, byte: 7 }, Expect::Ok),
                (Op::UffdEvents { p: 1, n: 0 }, Expect::Pass),
                (Op::Write { p: 0, r: 1, at: ALL, byte: 8 }, Expect::Ok),
                (Op::UffdEvents { p: 0, n: 4 }, Expect::Pass),
                // With them it keeps the registration and the protection.
                (Op::UffdUnregister { p: 0, r: 0, at: ALL }, Expect::Ok),
                (Op::UffdUnregister { p: 0, r: 1, at: ALL }, Expect::Ok),
                (reg(0, 0, true), Expect::Ok),
                (wp(0, 0, true), Expect::Ok),
                (Op::Fork { p: 0, c: 2 }, Expect::Ok),
                (Op::Query { p: 2, r: 0, at: ALL, q: q(None, None, None, Some(true)) }, Expect::Pass),
                (Op::Write { p: 2, r: 0, at: S1, byte: 9 }, Expect::Ok),
                (Op::UffdEvents { p: 2, n: 1 }, Expect::Pass),
                (Op::UffdEvents { p: 0, n: 0 }, Expect::Pass),
                (Op::Check { p: 0, r: 0, at: S1, byte: 0 }, Expect::Pass),
                (Op::UffdUnregister { p: 2, r: 0, at: ALL }, Expect::Ok),
                (Op::Query { p: 2, r: 0, at: ALL, q: q(None, None, Some(false), Some(false)) }, Expect::Pass),
            ],
        );
    }
}
