//! The access flag, in software and in hardware (FEAT_HAFDBS, TCR_EL1.HA).
//! fork gives the child old entries (Linux `pte_mkold`); the child's first
//! access either takes a real access-flag fault that the kernel resolves by
//! setting the flag, or, with HA on, is served by the MMU setting it itself
//! with no fault at all.

use alloc::string::String;

use super::anon;
use crate::arch::aarch64::cpu;
use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::mmap::MmapArgs;
use crate::mm::pgtable::Translation;
use crate::proc::{self, RunEnd};

/// What the MMU writes into descriptors as a test found it: TCR_EL1.HA and
/// HD (the same on every CPU) and what `mm::desc` records about them. Tests
/// that switch them restore exactly this when they end, so neither test
/// order nor `pagelab.hw-af=1`/`pagelab.hw-dbm=1` at boot changes what
/// another test sees.
#[derive(Clone, Copy)]
struct HwState {
    ha: bool,
    hd: bool,
    desc_af: bool,
    desc_dbm: bool,
}

impl HwState {
    fn save() -> Self {
        Self {
            ha: cpu::hw_af_enabled(),
            hd: cpu::hw_dirty_enabled(),
            desc_af: crate::mm::desc::hw_af(),
            desc_dbm: crate::mm::desc::hw_dbm(),
        }
    }

    /// Sets HA and HD on every CPU (HD only with HA) and records them: the
    /// records go on before the MMU may write and off after it stops.
    fn set(self) {
        use crate::mm::desc;
        if self.desc_af {
            desc::set_hw_af(true);
        }
        if self.desc_dbm {
            desc::set_hw_dbm(true);
        }
        // `on_every_cpu` takes a plain fn: one per combination.
        fn off() {
            if cpu::has_hw_dbm() {
                cpu::set_hw_dbm(false);
            }
            if cpu::has_hw_af() {
                cpu::set_hw_af(false);
            }
        }
        fn ha_only() {
            if cpu::has_hw_dbm() {
                cpu::set_hw_dbm(false);
            }
            cpu::set_hw_af(true);
        }
        fn ha_hd() {
            cpu::set_hw_dbm(true);
        }
        crate::kmain::on_every_cpu(match (self.ha, self.hd) {
            (_, true) => ha_hd,
            (true, false) => ha_only,
            (false, false) => off,
        });
        if !self.desc_af {
            desc::set_hw_af(false);
        }
        if !self.desc_dbm {
            desc::set_hw_dbm(false);
        }
    }
}

fn desc(p: &str, va: VirtAddr) -> Option<crate::mm::desc::Desc> {
    proc::with_tables(p, |_, t| match t.translate(va) {
        Translation::Mapped { desc, .. } => Some(desc),
        _ => None,
    })
    .ok()
    .flatten()
}

kernel_test!(access_flag_software_and_hardware);
fn access_flag_software_and_hardware() -> Result<(), String> {
    let (pa, ch) = ("af_parent", "af_child");
    let found = HwState::save();
    // The software half needs the MMU to leave the flag alone.
    HwState { ha: false, hd: false, desc_af: false, desc_dbm: false }.set();
    let r = proc::spawn(pa).map_err(String::from).and_then(|_| access_flag_in(pa, ch));
    let _ = proc::exit(ch);
    let _ = proc::exit(pa);
    found.set();
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
}

fn access_flag_in(pa: &str, ch: &str) -> Result<(), String> {
    let m = proc::mmap(pa, "m", super::anon(4 * PAGE_SIZE))?;
    ensure!(matches!(proc::access(pa, op::WRITE, m, 4 * PAGE_SIZE, 0x21)?, RunEnd::Done), "parent write");
    ensure!(desc(pa, m).is_some_and(|d| d.af()), "a faulted-in page must be young");
    proc::fork(pa, ch)?;
    for i in 0..4 {
        ensure!(desc(ch, m + i * PAGE_SIZE).is_some_and(|d| !d.af()), "the child's page {i} must be old after fork");
    }
    // Software: a real access-flag fault, resolved by setting the flag.
    let f0 = proc::fault_count(ch);
    ensure!(matches!(proc::access(ch, op::CHECK, m, 1, 0x21)?, RunEnd::Done), "child read");
    ensure!(
        proc::fault_count(ch) == f0 + 1,
        "software AF: {} faults for the first read, expected 1",
        proc::fault_count(ch) - f0
    );
    ensure!(
        desc(ch, m).is_some_and(|d| d.af() && d.perms().read_only),
        "the read must leave the entry young and still read-only"
    );
    // A write to an old read-only entry: one fault does both (AF and COW).
    let f0 = proc::fault_count(ch);
    ensure!(matches!(proc::access(ch, op::WRITE, m + PAGE_SIZE, 1, 0x22)?, RunEnd::Done), "child write");
    ensure!(
        proc::fault_count(ch) == f0 + 1,
        "a write to an old COW entry took {} faults, expected 1",
        proc::fault_count(ch) - f0
    );
    ensure!(
        desc(ch, m + PAGE_SIZE).is_some_and(|d| d.af() && d.user_writable()),
        "the COW copy must be young and writable"
    );
    if !cpu::has_hw_af() {
        return super::cannot_apply(
            "no FEAT_HAFDBS on this CPU: only the software half ran; all of it runs under -cpu max",
        );
    }
    // Hardware: the MMU sets the flag, no fault is taken.
    HwState { ha: true, hd: false, desc_af: true, desc_dbm: false }.set();
    let f0 = proc::fault_count(ch);
    let r = proc::access(ch, op::CHECK, m + 2 * PAGE_SIZE, 1, 0x21);
    let young = desc(ch, m + 2 * PAGE_SIZE).is_some_and(|d| d.af());
    let faults = proc::fault_count(ch) - f0;
    ensure!(matches!(r?, RunEnd::Done), "child read with HA");
    ensure!(faults == 0, "hardware AF: the read took {faults} fault(s)");
    ensure!(young, "hardware AF: the MMU did not set the access flag");
    ensure!(desc(ch, m + 3 * PAGE_SIZE).is_some_and(|d| !d.af()), "an untouched page must stay old");
    Ok(())
}

kernel_test!(dirty_state_in_hardware_dbm);
/// Hardware dirty state (TCR_EL1.HD, DBM): a writable-clean entry (DBM set,
/// AP[2] set) is written with no fault and the MMU makes it dirty; and no
/// write-protected entry keeps DBM, so COW after fork and mprotect(R) still
/// fault (Linux `pte_wrprotect` clears PTE_WRITE).
///
/// Checked with a `wrprotect` that keeps DBM: the test failed.
fn dirty_state_in_hardware_dbm() -> Result<(), String> {
    if !cpu::has_hw_dbm() {
        return super::cannot_apply("no FEAT_HAFDBS dirty state on this CPU: runs under -cpu max");
    }
    let found = HwState::save();
    HwState { ha: true, hd: true, desc_af: true, desc_dbm: true }.set();
    let (pa, ch) = ("dbm_parent", "dbm_child");
    proc::spawn(pa)?;
    let r = (|| -> Result<(), String> {
        // A shared file page read-faulted in: writable but clean.
        let s = proc::mmap(pa, "s", MmapArgs { shared: true, memfd: Some("dbm_test".into()), ..anon(PAGE_SIZE) })?;
        ensure!(matches!(proc::access(pa, op::CHECK, s, 1, 0)?, RunEnd::Done), "read of the shared page");
        let d = desc(pa, s).ok_or("the shared page is not mapped")?;
        ensure!(
            d.dbm() && d.perms().read_only && d.user_writable(),
            "a read-faulted shared writable page must be writable-clean (DBM, AP[2] set): {d:?}"
        );
        let f0 = proc::fault_count(pa);
        ensure!(matches!(proc::access(pa, op::WRITE, s, 1, 0x5d)?, RunEnd::Done), "write to the writable-clean page");
        ensure!(
            proc::fault_count(pa) == f0,
            "the write to a writable-clean entry took {} fault(s); the MMU should have dirtied it",
            proc::fault_count(pa) - f0
        );
        let d = desc(pa, s).ok_or("the shared page is gone")?;
        ensure!(d.hw_dirty(), "the MMU did not clear AP[2] (make the entry dirty): {d:?}");
        // mprotect(R): DBM goes with write permission; a write faults.
        proc::mprotect(pa, s, PAGE_SIZE, true, false)?;
        let d = desc(pa, s).ok_or("the shared page is gone")?;
        ensure!(
            !d.dbm() && d.perms().read_only && d.sw_dirty(),
            "after mprotect(R) the entry must be read-only, without DBM, still dirty: {d:?}"
        );
        ensure!(
            matches!(proc::access(pa, op::WRITE, s, 1, 0x5e)?, RunEnd::Fault { .. }),
            "a write after mprotect(R) succeeded: DBM left on a read-only entry"
        );
        // fork: the parent's private pages become COW, DBM off on both sides.
        let m = proc::mmap(pa, "m", anon(2 * PAGE_SIZE))?;
        ensure!(matches!(proc::access(pa, op::WRITE, m, 2 * PAGE_SIZE, 0x41)?, RunEnd::Done), "parent write");
        proc::fork(pa, ch)?;
        for who in [pa, ch] {
            let d = desc(who, m).ok_or("COW page not mapped")?;
            ensure!(
                !d.dbm() && d.perms().read_only,
                "{who}: a COW entry after fork must be read-only without DBM: {d:?}"
            );
        }
        let f0 = proc::fault_count(pa);
        ensure!(matches!(proc::access(pa, op::WRITE, m, 1, 0x42)?, RunEnd::Done), "parent write after fork");
        ensure!(
            proc::fault_count(pa) == f0 + 1,
            "the parent's write after fork took {} faults, expected 1 (COW)",
            proc::fault_count(pa) - f0
        );
        ensure!(
            matches!(proc::access(ch, op::CHECK, m, 1, 0x41)?, RunEnd::Done),
            "the child sees the parent's write after fork: COW broken"
        );
        // A writable-clean anon entry (DBM, AP[2] set) at fork: made from a
        // clean exclusive page - the unshared copy a R/O long-term pin
        // makes of a COW-shared page - by mprotect(R) then (RW). fork must
        // take DBM off it, or the parent writes into the shared page with
        // no fault and the child sees it.
        let c = m + PAGE_SIZE;
        let foll = crate::mm::gup::Foll { write: false, pin: true, longterm: true };
        proc::gup(pa, "dbm_pin", c, PAGE_SIZE, foll, false, &|| Ok(()))?;
        crate::mm::gup::drop_handle("dbm_pin")?;
        let _ = proc::exit(ch);
        proc::mprotect(pa, c, PAGE_SIZE, true, false)?;
        proc::mprotect(pa, c, PAGE_SIZE, true, true)?;
        let d = desc(pa, c).ok_or("the unshared page is not mapped")?;
        ensure!(
            d.dbm() && d.perms().read_only,
            "expected a writable-clean entry after unshare and mprotect(R), (RW): {d:?}"
        );
        proc::fork(pa, ch)?;
        let d = desc(pa, c).ok_or("the page is gone after fork")?;
        ensure!(!d.dbm() && d.perms().read_only, "fork left DBM on a writable-clean entry: {d:?}");
        let f0 = proc::fault_count(pa);
        ensure!(matches!(proc::access(pa, op::WRITE, c, 1, 0x47)?, RunEnd::Done), "parent write after the second fork");
        ensure!(
            proc::fault_count(pa) == f0 + 1,
            "the parent's write took {} faults, expected 1 (COW)",
            proc::fault_count(pa) - f0
        );
        ensure!(
            matches!(proc::access(ch, op::CHECK, c, 1, 0x41)?, RunEnd::Done),
            "the child sees the parent's write to a formerly writable-clean page: COW broken"
        );
        Ok(())
    })();
    let _ = proc::exit(ch);
    let _ = proc::exit(pa);
    let _ = crate::mm::shmem::remove_unmapped("dbm_test");
    found.set();
    r?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants: {e}"))
}
