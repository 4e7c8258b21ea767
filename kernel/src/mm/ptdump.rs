//! Page-table dumps in the style of Linux's arm64 ptdump
//! (`/sys/kernel/debug/kernel_page_tables`).
//!
//! Consecutive leaves with the same level and attributes are merged into one
//! line, as Linux does:
//! ```text
//! 0xffff800000000000-0xffff800000010000          64K PTE       ro x  SHD AF            UXN    MEM/NORMAL
//! ```

use core::fmt::{self, Write};

use super::addr::VirtAddr;
use super::desc::{Desc, Kind};
use super::pgtable::WalkEntry;
use crate::arch::aarch64::regs::mair;

/// Linux's name for a level, given the first lookup level.
pub fn level_name(level: u32, start_level: u32) -> &'static str {
    // With 4 levels: PGD PUD PMD PTE; with 3 levels: PGD PMD PTE.
    match (start_level, level) {
        (_, 3) => "PTE",
        (_, 2) => "PMD",
        (0, 1) => "PUD",
        (_, l) if l == start_level => "PGD",
        _ => "???",
    }
}

fn size_str(size: u64) -> (u64, char) {
    const UNITS: [char; 5] = [' ', 'K', 'M', 'G', 'T'];
    let mut s = size;
    let mut u = 0;
    while s >= 1024 && s.is_multiple_of(1024) && u < UNITS.len() - 1 {
        s /= 1024;
        u += 1;
    }
    (s, UNITS[u])
}

/// Writes the attribute columns for a leaf the way Linux does.
pub fn write_attrs(w: &mut dyn Write, d: Desc, level: u32) -> fmt::Result {
    let p = d.perms();
    let valid = d.is_valid();
    write!(
        w,
        "{} {} {} {} {} {} {} {} {} {}",
        if valid { " " } else { "F" },
        if p.el0 { "USR" } else { "   " },
        if p.read_only { "ro" } else { "RW" },
        if p.pxn { "NX" } else { "x " },
        if d.shareability() == 3 { "SHD" } else { "   " },
        if d.af() { "AF" } else { "  " },
        if d.ng() { "NG" } else { "  " },
        if d.contiguous() { "CON" } else { "   " },
        if level < 3 { "BLK" } else { "   " },
        if p.uxn { "UXN" } else { "   " },
    )?;
    write!(w, "    {}", mair::name(d.attr_index()))?;
    if d.special() {
        write!(w, " SPECIAL")?;
    }
    Ok(())
}

/// Accumulates leaves and prints merged ranges.
pub struct PtDump<'w> {
    out: &'w mut dyn Write,
    start_level: u32,
    markers: &'static [(VirtAddr, &'static str)],
    next_marker: usize,
    cur: Option<(u64, u64, u32, u64, Desc)>, // start, end, level, attr bits, first desc
    pub leaves: usize,
    pub lines: usize,
}

impl<'w> PtDump<'w> {
    pub fn new(out: &'w mut dyn Write, start_level: u32, markers: &'static [(VirtAddr, &'static str)]) -> Self {
        Self { out, start_level, markers, next_marker: 0, cur: None, leaves: 0, lines: 0 }
    }

    fn flush(&mut self) -> fmt::Result {
        if let Some((start, end, level, _, d)) = self.cur.take() {
            let (n, unit) = size_str(end.wrapping_sub(start));
            write!(self.out, "{start:#018x}-{end:#018x} {n:>9}{unit} {:<5}  ", level_name(level, self.start_level))?;
            write_attrs(self.out, d, level)?;
            writeln!(self.out)?;
            self.lines += 1;
        }
        Ok(())
    }

    fn markers_up_to(&mut self, va: VirtAddr) -> fmt::Result {
        while self.next_marker < self.markers.len() && self.markers[self.next_marker].0 <= va {
            self.flush()?;
            writeln!(self.out, "---[ {} ]---", self.markers[self.next_marker].1)?;
            self.next_marker += 1;
        }
        Ok(())
    }

    /// Feeds one walk entry; only leaves and non-present entries print.
    pub fn entry(&mut self, e: &WalkEntry) -> fmt::Result {
        if matches!(e.kind, Kind::Table(_) | Kind::None) {
            return Ok(());
        }
        self.markers_up_to(e.va)?;
        self.leaves += 1;
        let va = e.va.as_u64();
        let attrs = e.desc.attr_bits();
        if let Some((_, end, level, a, _)) = self.cur.as_mut()
            && *end == va
            && *level == e.level
            && *a == attrs
        {
            *end = va.wrapping_add(e.size);
            return Ok(());
        }
        self.flush()?;
        self.cur = Some((va, va.wrapping_add(e.size), e.level, attrs, e.desc));
        Ok(())
    }

    pub fn finish(mut self) -> Result<(usize, usize), fmt::Error> {
        self.flush()?;
        Ok((self.leaves, self.lines))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::arch::aarch64::granule::Granule;
    use crate::mm::addr::PhysAddr;
    use crate::mm::desc::LeafAttrs;
    use crate::mm::pgtable::{
        LeafSizes, Tables,
        host::{HostMem, map},
    };
    use std::string::String;

    static MARKERS: &[(VirtAddr, &str)] = &[
        (VirtAddr::new(0xffff_0000_0000_0000), "Linear Mapping start"),
        (VirtAddr::new(0xffff_8000_0000_0000), "Kernel Image start"),
    ];

    #[test]
    fn merges_runs_and_prints_linux_columns() {
        let g = Granule::K4;
        let (mut mem, root) = HostMem::new(g);
        let mut t = Tables::new(root, g, 0, &mut mem);
        map(
            &mut t,
            VirtAddr::new(0xffff_0000_4000_0000),
            PhysAddr::new(0x4000_0000),
            1 << 30,
            LeafAttrs::KERNEL_RW,
            LeafSizes::Largest,
        )
        .unwrap();
        map(
            &mut t,
            VirtAddr::new(0xffff_8000_0000_0000),
            PhysAddr::new(0x4008_0000),
            0x10000,
            LeafAttrs::KERNEL_RX,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        map(
            &mut t,
            VirtAddr::new(0xffff_8000_0001_0000),
            PhysAddr::new(0x4009_0000),
            0x20000,
            LeafAttrs::KERNEL_RO,
            LeafSizes::PagesOnly,
        )
        .unwrap();
        let mut s = String::new();
        let mut d = PtDump::new(&mut s, 0, MARKERS);
        t.walk(true, &mut |e| d.entry(e).unwrap());
        let (leaves, lines) = d.finish().unwrap();
        assert_eq!(leaves, 1 + 16 + 32);
        assert_eq!(lines, 3);
        let v: std::vec::Vec<&str> = s.lines().collect();
        assert_eq!(v[0], "---[ Linear Mapping start ]---");
        assert!(v[1].starts_with("0xffff000040000000-0xffff000080000000         1G PUD"), "{}", v[1]);
        assert!(v[1].contains("RW NX SHD AF") && v[1].contains("BLK UXN") && v[1].ends_with("MEM/NORMAL"), "{}", v[1]);
        assert_eq!(v[2], "---[ Kernel Image start ]---");
        assert!(v[3].contains("64K PTE") && v[3].contains("ro x  SHD AF"), "{}", v[3]);
        assert!(v[4].contains("128K PTE") && v[4].contains("ro NX"), "{}", v[4]);
    }

    #[test]
    fn level_names() {
        assert_eq!(level_name(0, 0), "PGD");
        assert_eq!(level_name(1, 0), "PUD");
        assert_eq!(level_name(1, 1), "PGD");
        assert_eq!(level_name(2, 1), "PMD");
        assert_eq!(level_name(3, 1), "PTE");
    }
}
