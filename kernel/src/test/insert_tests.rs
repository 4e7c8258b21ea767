//! `vm_insert_page`, `vm_insert_pages` and `vmf_insert_mixed` with the
//! zero-page rules of seed 001 (`vm_mixed_zeropage_allowed`), every row of
//! its decision table, checked on real VMAs and with real EL0 accesses.

use alloc::string::String;

use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::error::InsertError;
use crate::mm::memory::{self, VmFault};
use crate::mm::mm_struct::VmFlags;
use crate::mm::page;
use crate::mm::pgtable::Translation;
use crate::proc::{self, RunEnd};

const P: &str = "insert_test";

fn flags(list: &[VmFlags]) -> VmFlags {
    list.iter().fold(VmFlags(0), |a, &f| a | f)
}

fn insert(va: VirtAddr, pa: PhysAddr) -> Result<(), InsertError> {
    proc::with_mm_write(P, |p, g| memory::vm_insert_page(p.mt(), g, va, pa)).expect("process exists")
}

fn entry(va: VirtAddr) -> Option<crate::mm::desc::Desc> {
    proc::with_tables(P, |_, t| match t.translate(va) {
        Translation::Mapped { desc, .. } => Some(desc),
        _ => None,
    })
    .ok()
    .flatten()
}

fn run(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    proc::spawn(P)?;
    let r = f();
    let inv = crate::console::commands::invariants();
    proc::exit(P)?;
    r?;
    inv.map_err(|e| alloc::format!("invariants: {e}"))?;
    crate::console::commands::invariants().map_err(|e| alloc::format!("invariants after exit: {e}"))
}

kernel_test!(insert_zeropage_decision_table);
/// The rows: (what, VMA flags, forbid zeropage, allowed). Refusals are
/// checked by their `InsertError` reason: with `validate_page_before_insert`
/// giving `NotInsertable` (same errno) for a forbidden zero page, it fails.
fn insert_zeropage_decision_table() -> Result<(), String> {
    use VmFlags as F;
    let rows: &[(&str, VmFlags, bool, bool)] = &[
        ("mm forbids the zeropage (COW mapping)", flags(&[F::READ, F::WRITE, F::MAYWRITE]), true, false),
        ("COW mapping, writable", flags(&[F::READ, F::WRITE, F::MAYWRITE]), false, true),
        ("COW mapping, read-only", flags(&[F::READ, F::MAYWRITE]), false, true),
        ("shared, neither VM_WRITE nor VM_MAYWRITE (the reviewer's row)", flags(&[F::READ, F::SHARED]), false, true),
        ("shared, VM_MAYWRITE, no pfn_mkwrite", flags(&[F::READ, F::SHARED, F::MAYWRITE]), false, false),
        ("shared writable, no pfn_mkwrite", flags(&[F::READ, F::WRITE, F::SHARED, F::MAYWRITE]), false, false),
        (
            "shared writable, pfn_mkwrite, neither fsdax nor VM_IO",
            flags(&[F::READ, F::WRITE, F::SHARED, F::MAYWRITE, F::PFN_MKWRITE]),
            false,
            false,
        ),
        (
            "shared writable, pfn_mkwrite, fsdax",
            flags(&[F::READ, F::WRITE, F::SHARED, F::MAYWRITE, F::PFN_MKWRITE, F::FSDAX]),
            false,
            true,
        ),
        (
            "shared writable, pfn_mkwrite, VM_IO",
            flags(&[F::READ, F::WRITE, F::SHARED, F::MAYWRITE, F::PFN_MKWRITE, F::IO]),
            false,
            true,
        ),
        (
            "shared writable, VM_IO without pfn_mkwrite",
            flags(&[F::READ, F::WRITE, F::SHARED, F::MAYWRITE, F::IO]),
            false,
            false,
        ),
    ];
    run(|| {
        for &(what, f, forbid, allowed) in rows {
            let va = proc::vma_for_test(P, PAGE_SIZE, f)?;
            proc::with_mm_write(P, |p, _| p.mm.forbid_zeropage.store(forbid, core::sync::atomic::Ordering::Release))?;
            let r = insert(va, page::zero_page());
            proc::with_mm_write(P, |p, _| p.mm.forbid_zeropage.store(false, core::sync::atomic::Ordering::Release))?;
            if !allowed {
                ensure!(
                    r == Err(InsertError::ZeroPageForbidden { addr: va }),
                    "{what}: inserting the zero page gave {r:?}, expected ZeroPageForbidden"
                );
                ensure!(entry(va).is_none(), "{what}: refused, yet something is mapped");
                continue;
            }
            ensure!(r.is_ok(), "{what}: inserting the zero page gave {r:?}");
            let d = entry(va).ok_or_else(|| alloc::format!("{what}: nothing mapped"))?;
            ensure!(d.special() && d.perms().read_only, "{what}: the zero page must be special and read-only: {d:?}");
            // A real EL0 load reads zeroes from it.
            let r = proc::access(P, op::CHECK, va, PAGE_SIZE, 0)?;
            ensure!(matches!(r, RunEnd::Done), "{what}: EL0 read of the zero page: {r:?}");
            // In a COW mapping a write replaces it with an anon page; anywhere
            // else the write must not reach the zero page.
            let r = proc::access(P, op::WRITE, va, 1, 0x5a)?;
            if f.contains(F::WRITE) && !f.contains(F::SHARED) {
                ensure!(matches!(r, RunEnd::Done), "{what}: write after insert: {r:?}");
                let d = entry(va).unwrap();
                ensure!(
                    !d.special() && !page::is_zero_pfn(d.output_address(PAGE_SIZE)),
                    "{what}: the write did not COW the zero page"
                );
            } else {
                ensure!(matches!(r, RunEnd::Fault { .. }), "{what}: a write to the inserted zero page got {r:?}");
            }
            ensure!(page::zero_page_is_zero(), "{what}: the shared zero page was written");
            // Inserting over a mapped entry is -EBUSY.
            let r2 = insert(va, page::zero_page());
            ensure!(r2 == Err(InsertError::Busy { addr: va }), "{what}: a second insert gave {r2:?}, expected Busy");
        }
        // PFN mappings are refused (Linux: BUG_ON).
        let va = proc::vma_for_test(P, PAGE_SIZE, flags(&[F::READ, F::PFNMAP, F::IO]))?;
        ensure!(
            insert(va, page::zero_page()) == Err(InsertError::PfnMap { addr: va }),
            "vm_insert_page into a VM_PFNMAP VMA must be refused"
        );
        Ok(())
    })
}

kernel_test!(insert_pages_and_mixed);
fn insert_pages_and_mixed() -> Result<(), String> {
    use VmFlags as F;
    run(|| {
        // A driver page: mapped with a reference and a mapping; EL0 reads it.
        let kp = page::folio_alloc_kernel().ok_or("no memory")?;
        crate::arch::aarch64::cpu::zero_pages(crate::mm::layout::phys_to_virt(kp.pa()).as_u64(), PAGE_SIZE);
        // SAFETY: our page, in the linear map.
        unsafe {
            core::ptr::write_bytes(
                crate::mm::layout::phys_to_virt(kp.pa()).as_u64() as *mut u8,
                0x3c,
                PAGE_SIZE as usize,
            )
        };
        let shared_ro = flags(&[F::READ, F::SHARED]);
        let va = proc::vma_for_test(P, 4 * PAGE_SIZE, shared_ro)?;
        // A batch with the zero page in it: the fixed batch check lets it in.
        let (n, r) =
            proc::with_mm_write(P, |p, g| memory::vm_insert_pages(p.mt(), g, va, &[kp.pa(), page::zero_page()]))?;
        ensure!(n == 2 && r.is_ok(), "vm_insert_pages([page, zero page]) inserted {n}: {r:?}");
        ensure!(
            kp.refcount() == 2 && kp.head().mapcount() == 1,
            "driver page: refcount {} mapcount {}",
            kp.refcount(),
            kp.head().mapcount()
        );
        ensure!(
            matches!(proc::access(P, op::CHECK, va, PAGE_SIZE, 0x3c)?, RunEnd::Done),
            "EL0 does not read the driver page's bytes"
        );
        ensure!(
            matches!(proc::access(P, op::CHECK, va + PAGE_SIZE, PAGE_SIZE, 0)?, RunEnd::Done),
            "EL0 does not read zeroes from the batch's zero page"
        );
        // Anon pages and pages nobody holds are refused.
        let anon = page::folio_alloc_anon(0).ok_or("no memory")?;
        ensure!(
            insert(va + 2 * PAGE_SIZE, anon.pa()) == Err(InsertError::NotInsertable { pa: anon.pa() }),
            "an anon page must not be inserted"
        );
        anon.put();
        let (n, r) =
            proc::with_mm_write(P, |p, g| memory::vm_insert_pages(p.mt(), g, va + 2 * PAGE_SIZE, &[anon.pa()]))?;
        ensure!(
            n == 0 && r == Err(InsertError::Freed { pa: anon.pa() }),
            "a freed page (refcount 0) must be refused by the batch, got {n} {r:?}"
        );
        // vmf_insert_mixed: zero pfn by the same table; PFN mappings take anything.
        let shared_w = flags(&[F::READ, F::WRITE, F::SHARED, F::MAYWRITE]);
        let w = proc::vma_for_test(P, PAGE_SIZE, shared_w)?;
        let vma = proc::with_mm_write(P, |_, g| *g.find_mut(w).unwrap())?;
        let r = proc::with_mm_write(P, |p, _| memory::vmf_insert_mixed(p.mt(), &vma, w, page::zero_page()))?;
        ensure!(
            r == VmFault::Sigsegv,
            "vmf_insert_mixed(zero pfn) into a shared writable mapping must fail, got {r:?}"
        );
        let io = proc::vma_for_test(P, PAGE_SIZE, flags(&[F::READ, F::SHARED, F::PFNMAP, F::IO]))?;
        let vma = proc::with_mm_write(P, |_, g| *g.find_mut(io).unwrap())?;
        let r = proc::with_mm_write(P, |p, _| memory::vmf_insert_mixed(p.mt(), &vma, io, page::zero_page()))?;
        ensure!(r == VmFault::Done && entry(io).is_some_and(|d| d.special()), "vmf_insert_mixed into VM_IO: {r:?}");
        let cow = proc::vma_for_test(P, PAGE_SIZE, flags(&[F::READ, F::WRITE, F::MAYWRITE]))?;
        let vma = proc::with_mm_write(P, |_, g| *g.find_mut(cow).unwrap())?;
        let r = proc::with_mm_write(P, |p, _| memory::vmf_insert_mixed(p.mt(), &vma, cow, page::zero_page()))?;
        ensure!(
            r == VmFault::Done && entry(cow).is_some_and(|d| d.special() && d.perms().read_only),
            "vmf_insert_mixed(zero pfn) into a COW mapping: {r:?}"
        );
        ensure!(
            matches!(proc::access(P, op::CHECK, cow, PAGE_SIZE, 0)?, RunEnd::Done),
            "EL0 read of the mixed zero page"
        );
        // Unmapping drops the mapping's reference; the driver's stays.
        let g = proc::with_mm_write(P, |p, _| {
            memory::zap_page_range(
                p.mt(),
                va,
                4 * PAGE_SIZE,
                &memory::ZapDetails { zap_flags: memory::ZAP_FLAG_DROP_MARKER, vma: None },
            )
        })?;
        g?;
        ensure!(
            kp.refcount() == 1 && kp.head().mapcount() == 0,
            "after zap: refcount {} mapcount {}",
            kp.refcount(),
            kp.head().mapcount()
        );
        kp.put();
        Ok(())
    })
}
