//! Userfaultfd write-protect on real user tables: what the scripts cannot
//! reach from the console.

use alloc::string::String;

use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::desc::{Kind, NonPresent, marker};
use crate::mm::memory;
use crate::mm::pgtable::{MapError, Stage1User};
use crate::mm::tlb::KernelFlush;
use crate::proc::{self, RunEnd};

kernel_test!(uffd_marker_over_pending_break);
/// Zap writes a uffd-wp marker right after the atomic swap that broke a
/// live entry, before the flush (Linux `zap_install_uffd_wp_if_needed`):
/// `Pte::set_non_present` takes it, since no TLB holds an invalid entry,
/// while a valid value, or any value over a valid entry, is refused. After
/// the flush the page goes back and the process reads its data with no
/// new fault. Broken on purpose (`set_non_present` refusing a pending
/// slot, as `set_new` does) the marker is refused and this test fails.
fn uffd_marker_over_pending_break() -> Result<(), String> {
    let p = "uffd_pending";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(p, op::WRITE, m, PAGE_SIZE, 0x5a)?, RunEnd::Done), "fault in");
        let va = m.as_u64();
        let mk = NonPresent::Marker(marker::UFFD_WP).encode();
        let (old, over_valid, valid_value, marker_in, seen) = proc::with_proc(p, |pr| {
            let ptl = pr.mm.page_table_lock_guard();
            let mut mem = pr.tables.lock();
            let Some(e) = memory::pte_lookup(&ptl, &mut mem, VirtAddr::new(va), false) else {
                return Ok(Err(String::from("no level-3 entry")));
            };
            let over_valid = e.set_non_present(mk);
            let old = e.get_and_clear();
            let valid_value = e.set_non_present(old);
            let marker_in = e.set_non_present(mk);
            let seen = e.get();
            e.flush(&Stage1User { asid: pr.mm.asid() }, &mut KernelFlush, m, PAGE_SIZE);
            e.get_and_clear();
            let back = e.set_new(old);
            crate::arch::aarch64::cpu::publish_tables();
            if let Err(b) = back {
                return Ok(Err(alloc::format!("the page did not go back: {b:?}")));
            }
            Ok(Ok((old, over_valid, valid_value, marker_in, seen)))
        })??;
        ensure!(old.is_valid(), "the written page's entry is not valid: {old:?}");
        ensure!(matches!(over_valid, Err(MapError::NeedsBreakBeforeMake { .. })), "over a valid entry: {over_valid:?}");
        ensure!(matches!(valid_value, Err(MapError::NeedsBreakBeforeMake { .. })), "a valid value: {valid_value:?}");
        ensure!(marker_in.is_ok(), "the marker over the pending break: {marker_in:?}");
        ensure!(
            seen.kind(3, GRANULE) == Kind::NonPresent(NonPresent::Marker(marker::UFFD_WP)),
            "the entry holds {seen:?}, not the marker"
        );
        let f0 = proc::fault_count(p);
        ensure!(matches!(proc::access(p, op::CHECK, m, PAGE_SIZE, 0x5a)?, RunEnd::Done), "data after the make");
        ensure!(proc::fault_count(p) == f0, "the remade entry faulted {} times", proc::fault_count(p) - f0);
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}

kernel_test!(uffd_wp_on_refused_part_way_flushes);
/// `wp on` over a range whose second level-2 span has no table yet, with
/// every allocation failing: the first page, written just before (its
/// writable translation in this CPU's TLB), is made read-only with the
/// bit, then the table allocation fails and the command is refused. The
/// TLB must still be flushed for what was done: the next write faults and
/// raises the event. Without the flush on the error path the write would
/// go through a stale writable translation on hardware; QEMU drops its
/// TLB on every ASID switch, so the test sees the missing flush through
/// the TLB maintenance counters (`mm::tlb`).
fn uffd_wp_on_refused_part_way_flushes() -> Result<(), String> {
    let p = "uffd_wp_refused";
    let bs = GRANULE.level_size(2);
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let args = crate::mm::mmap::MmapArgs { align: bs, noreserve: true, ..super::anon(2 * bs) };
        let m = proc::mmap(p, "m", args)?;
        let wr = |b: u8| -> Result<(), String> {
            ensure!(matches!(proc::access(p, op::WRITE, m, PAGE_SIZE, b)?, RunEnd::Done), "write {b:#x}");
            Ok(())
        };
        wr(0x11)?;
        let r = proc::with_proc(p, |pr| {
            crate::mm::userfaultfd::register(pr.mt(), m, 2 * bs, false).map_err(|_| proc::ProcError::Invalid)?;
            crate::mm::fail_alloc::fail_after(0);
            crate::mm::fail_alloc::arm(true);
            let before = tlb_ops();
            let r = crate::mm::userfaultfd::writeprotect(pr.mt(), m, 2 * bs, true);
            let flushed = tlb_ops() > before;
            crate::mm::fail_alloc::arm(false);
            crate::mm::fail_alloc::configure(0, 0);
            Ok((r, flushed))
        })?;
        let (r, flushed) = r;
        ensure!(
            matches!(r, Err(crate::mm::userfaultfd::UffdError::Mm(e)) if e.is_oom()),
            "wp on with no table memory: {r:?}"
        );
        ensure!(flushed, "the refused wp on issued no TLB flush for the page it write-protected");
        let events = |pr: &proc::Process| Ok(crate::mm::userfaultfd::take_events(&pr.mm));
        proc::with_proc(p, events)?;
        wr(0x22)?;
        let n = proc::with_proc(p, events)?;
        ensure!(n == 1, "the write after the refused wp on raised {n} event(s), expected 1 (stale TLB entry)");
        ensure!(matches!(proc::access(p, op::CHECK, m, PAGE_SIZE, 0x22)?, RunEnd::Done), "the data");
        crate::console::commands::invariants().map_err(|e| alloc::format!("after the refused wp on: {e}"))?;
        Ok(())
    })();
    proc::exit(p)?;
    r
}

/// TLB maintenance operations issued so far (any kind).
fn tlb_ops() -> u64 {
    use crate::mm::tlb::{FULL_FLUSHES, RANGE_OPS, TLBI_OPS};
    use core::sync::atomic::Ordering::Relaxed;
    TLBI_OPS.load(Relaxed) + FULL_FLUSHES.load(Relaxed) + RANGE_OPS.load(Relaxed)
}
