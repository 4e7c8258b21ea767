//! The `Pte` API's lock ties on real user tables: the pending-break record
//! that outlives one call ([`crate::mm::pgtable::PendingBreaks`]) and the
//! check that a page-table lock is its own mm's.

use alloc::string::String;
use core::sync::atomic::Ordering;

use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::VirtAddr;
use crate::mm::desc::Kind;
use crate::mm::memory;
use crate::mm::pgtable::cursor::BBM_VIOLATIONS;
use crate::mm::pgtable::{MapError, Pte, Stage1User};
use crate::mm::tlb::KernelFlush;
use crate::proc::{self, RunEnd};

kernel_test!(cursor_pending_break_refuses_make_until_flushed);
/// A break and its make in two calls, on a page an EL0 process wrote:
/// `get_and_clear` of the live entry, then `set_new` of the same entry
/// with no TLB flush between must be refused ([`MapError::BbmViolation`],
/// counted in [`BBM_VIOLATIONS`]) and leave the entry invalid; after the
/// regime's flush through `Pte::flush` the same make goes in, and the
/// process reads its data back with no new fault. Broken on purpose
/// (the `covers` check in `Pte::set_new` removed) the first make goes in
/// and this test fails.
fn cursor_pending_break_refuses_make_until_flushed() -> Result<(), String> {
    let p = "pte_pending";
    proc::spawn(p)?;
    let r = (|| -> Result<(), String> {
        let m = proc::mmap(p, "m", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(p, op::WRITE, m, PAGE_SIZE, 0x5a)?, RunEnd::Done), "fault in");
        let v0 = BBM_VIOLATIONS.load(Ordering::Relaxed);
        let va = m.as_u64();
        let (old, refused, between, accepted) = proc::with_proc(p, |pr| {
            let ptl = pr.mm.page_table_lock_guard();
            let mut mem = pr.tables.lock();
            let Some(pmd) = memory::pmd_lookup(&ptl, &mut mem, VirtAddr::new(va), false) else {
                return Ok(Err(String::from("no level-2 entry")));
            };
            let Kind::Table(table) = pmd.get().kind(2, GRANULE) else {
                return Ok(Err(String::from("no level-3 table")));
            };
            // SAFETY: `table` was reached from this mm's pgd under `ptl`.
            let e = unsafe { memory::entry(pmd, &mem, table, GRANULE.index(va, 3)) };
            let old = e.get_and_clear();
            let refused = e.set_new(old);
            let between = e.get();
            e.flush(&Stage1User { asid: pr.mm.asid() }, &mut KernelFlush, m, PAGE_SIZE);
            let accepted = e.set_new(old);
            crate::arch::aarch64::cpu::publish_tables();
            Ok(Ok((old, refused, between, accepted)))
        })??;
        ensure!(old.is_valid(), "the written page's entry is not valid: {old:?}");
        ensure!(
            matches!(refused, Err(MapError::BbmViolation { .. })),
            "a make over a broken, unflushed entry: {refused:?}"
        );
        ensure!(BBM_VIOLATIONS.load(Ordering::Relaxed) > v0, "the refusal was not counted");
        ensure!(between.0 == 0, "the refused make wrote the entry: {between:?}");
        ensure!(accepted.is_ok(), "the make after the flush: {accepted:?}");
        let f0 = proc::fault_count(p);
        ensure!(matches!(proc::access(p, op::CHECK, m, PAGE_SIZE, 0x5a)?, RunEnd::Done), "data after the make");
        ensure!(proc::fault_count(p) == f0, "the remade entry faulted {} times", proc::fault_count(p) - f0);
        Ok(())
    })();
    let _ = proc::exit(p);
    r
}

kernel_test!(cursor_another_mms_lock_is_refused);
/// A page-table lock is proof for its own mm's tables only: `Pte::locate`
/// of process A's pgd under process B's lock is refused
/// ([`MapError::WrongLock`]), under A's own it is not. Broken on purpose
/// (the root compare in `Pte::locate` removed) the first locate succeeds
/// and this test fails.
fn cursor_another_mms_lock_is_refused() -> Result<(), String> {
    let (a, b) = ("pte_lock_a", "pte_lock_b");
    proc::spawn(a)?;
    let r = (|| -> Result<(), String> {
        proc::spawn(b)?;
        let (wrong, right) = proc::with_proc(a, |pa| {
            proc::with_proc(b, |pb| {
                let mem = pa.tables.lock();
                let ptl_b = pb.mm.page_table_lock_guard();
                // SAFETY: A's pgd is a table page in the linear map.
                let wrong = unsafe { Pte::locate(&ptl_b, &*mem, pa.mm.pgd, 0) }.err();
                drop(ptl_b);
                let ptl_a = pa.mm.page_table_lock_guard();
                // SAFETY: as above.
                let right = unsafe { Pte::locate(&ptl_a, &*mem, pa.mm.pgd, 0) }.err();
                Ok((wrong, right))
            })
        })?;
        ensure!(
            matches!(wrong, Some(MapError::WrongLock { root }) if root == proc::with_proc(a, |pa| Ok(pa.mm.pgd))?),
            "A's tables under B's lock: {wrong:?}"
        );
        ensure!(right.is_none(), "A's tables under A's lock: {right:?}");
        Ok(())
    })();
    let _ = proc::exit(b);
    let _ = proc::exit(a);
    r
}
