//! System calls from a real EL0 process with bad arguments: every one gets
//! an errno, the kernel never faults, and the process's memory accounting
//! comes back exactly.

use alloc::string::{String, ToString};

use crate::arch::aarch64::granule::PAGE_SIZE;
use crate::arch::aarch64::user::op;
use crate::ensure;
use crate::errno::{EBADF, EFAULT, EINVAL, ENOMEM, ENOSYS};
use crate::mm::addr::VirtAddr;
use crate::mm::frame;
use crate::mm::mmap::MmapArgs;
use crate::proc::syscall::{MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, nr};
use crate::proc::{self, RunEnd};

/// The flags of the VMA at `va` in `name`.
fn vma_flags(name: &str, va: u64) -> Result<Option<crate::mm::mm_struct::VmFlags>, String> {
    use crate::mm::mm_struct::MmapLocked;
    Ok(proc::with_proc(name, |p| Ok(p.mm.mmap_read_lock().vmas().find(VirtAddr::new(va)).map(|v| v.flags)))?)
}

kernel_test!(mprotect_madvise_errnos_as_linux);
/// Where mprotect and madvise used to differ from Linux: mprotect of
/// length 0 is 0; past the user top or with a length that wraps it is
/// -ENOMEM (`do_mprotect_pkey`), and so is madvise past the user top (a
/// hole); MADV_(NO)HUGEPAGE over a hole applies to the mapped parts, then
/// is -ENOMEM (`madvise_walk_vmas`); DONTNEED of a PFN mapping is -EINVAL
/// and leaves its entries (`madvise_dontneed_free_valid_vma`).
fn mprotect_madvise_errnos_as_linux() -> Result<(), String> {
    use crate::mm::mm_struct::VmFlags;
    let name = "linux_errno_test";
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let sc = |n: u64, a: [u64; 6]| proc::syscall(name, n, a);
        // Two mappings with the guard page between them: a hole.
        let m = sc(nr::MMAP, [0, 4 * PAGE_SIZE, 3, 0x22, u64::MAX, 0])?;
        let m2 = sc(nr::MMAP, [0, 4 * PAGE_SIZE, 3, 0x22, u64::MAX, 0])?;
        ensure!(m > 0 && m2 > 0, "mmap: {m} {m2}");
        let (m, m2) = (m as u64, m2 as u64);
        ensure!(m2 >= m + 5 * PAGE_SIZE, "no hole between the mappings");
        let top = crate::arch::aarch64::regs::USER_TOP;
        let cases: [(&str, u64, [u64; 6], i64); 10] = [
            ("mprotect of length 0", nr::MPROTECT, [m, 0, 1, 0, 0, 0], 0),
            ("mprotect of length 0 with bad prot", nr::MPROTECT, [m, 0, 0x100, 0, 0, 0], 0),
            ("mprotect misaligned of length 0", nr::MPROTECT, [m + 1, 0, 1, 0, 0, 0], -EINVAL),
            ("mprotect past the user top", nr::MPROTECT, [top - PAGE_SIZE, 2 * PAGE_SIZE, 1, 0, 0, 0], -ENOMEM),
            ("mprotect above the user top", nr::MPROTECT, [top, PAGE_SIZE, 1, 0, 0, 0], -ENOMEM),
            ("mprotect with a length that wraps", nr::MPROTECT, [m, u64::MAX - 10, 1, 0, 0, 0], -ENOMEM),
            (
                "madvise past the user top",
                nr::MADVISE,
                [top - PAGE_SIZE, 2 * PAGE_SIZE, MADV_DONTNEED, 0, 0, 0],
                -ENOMEM,
            ),
            ("madvise with a length that wraps", nr::MADVISE, [m, u64::MAX - 10, MADV_DONTNEED, 0, 0, 0], -EINVAL),
            ("madvise of length 0", nr::MADVISE, [m, 0, MADV_HUGEPAGE, 0, 0, 0], 0),
            ("madvise of part of a mapping", nr::MADVISE, [m + PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED, 0, 0, 0], 0),
        ];
        for (what, n, a, want) in cases {
            let got = sc(n, a)?;
            ensure!(got == want, "{what}: got {got}, expected {want}");
        }
        // Over the hole: -ENOMEM, and both mapped parts got the advice.
        let len = m2 + PAGE_SIZE - m;
        for (advice, flag) in [(MADV_NOHUGEPAGE, VmFlags::NOHUGEPAGE), (MADV_HUGEPAGE, VmFlags::HUGEPAGE)] {
            let got = sc(nr::MADVISE, [m, len, advice, 0, 0, 0])?;
            ensure!(got == -ENOMEM, "madvise {advice} over a hole: got {got}, expected {}", -ENOMEM);
            for a in [m, m + 3 * PAGE_SIZE, m2] {
                let f = vma_flags(name, a)?;
                ensure!(f.is_some_and(|f| f.contains(flag)), "madvise {advice} over a hole: {a:#x} has {f:?}");
            }
            let f = vma_flags(name, m2 + PAGE_SIZE)?;
            ensure!(f.is_some_and(|f| !f.contains(flag)), "past the range: {f:?}");
        }
        // DONTNEED of a PFN mapping: refused, its entries stay.
        if let Some((ps, _)) = crate::mm::memory::pfn_pool() {
            let io = proc::mmap(name, "io", MmapArgs { pfn: Some(ps), shared: true, ..super::anon(PAGE_SIZE) })?;
            ensure!(proc::mapped_level(name, io) == Some(3), "the PFN mapping is not mapped");
            match proc::madvise(name, io, PAGE_SIZE, crate::mm::madvise::Advice::DontNeed) {
                Err(e) if e.errno() == EINVAL => {}
                other => return Err(alloc::format!("madvise dontneed of a PFN mapping: {other:?}, expected EINVAL")),
            }
            ensure!(proc::mapped_level(name, io) == Some(3), "madvise dontneed zapped a PFN mapping");
        }
        Ok(())
    })();
    proc::exit(name)?;
    r
}

kernel_test!(el0_fault_out_of_memory_is_reported);
/// An EL0 access whose fault runs out of memory (the frame, or the table
/// for it) ends as `out of memory`, not as a permission or translation
/// fault; once memory is back the same access works and nothing leaked.
/// The reasons no mapping and permission are told apart too.
fn el0_fault_out_of_memory_is_reported() -> Result<(), String> {
    use crate::mm::fail_alloc;
    use proc::Unresolved;
    let name = "oomfault_test";
    let free = frame::stats().free;
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let a = proc::mmap(name, "a", super::anon(4 * PAGE_SIZE))?;
        let ro = proc::mmap(name, "ro", MmapArgs { writable: false, ..super::anon(PAGE_SIZE) })?;
        // k = 0: the table for the page fails; k = 1: the frame fails.
        for k in 0..2 {
            fail_alloc::fail_after(k);
            fail_alloc::arm(true);
            let end = proc::access(name, op::WRITE, a, 8, 0x42);
            fail_alloc::arm(false);
            fail_alloc::configure(0, 0);
            match end? {
                RunEnd::Fault { addr, why: Unresolved::OutOfMemory, .. } if addr == a => {}
                other => {
                    return Err(alloc::format!("allocation {k} failing: {other:?}, expected out of memory at {a:#x}"));
                }
            }
            ensure!(Unresolved::OutOfMemory.to_string() == "out of memory", "the reason's text");
        }
        ensure!(matches!(proc::access(name, op::WRITE, a, 8, 0x42)?, RunEnd::Done), "the write once memory is back");
        ensure!(matches!(proc::access(name, op::CHECK, a, 8, 0x42)?, RunEnd::Done), "its bytes");
        match proc::access(name, op::WRITE, ro, 1, 1)? {
            RunEnd::Fault { why: Unresolved::Permission, .. } => {}
            other => return Err(alloc::format!("write to a read-only mapping: {other:?}, expected permission")),
        }
        match proc::access(name, op::TOUCH_READ, a + 64 * PAGE_SIZE, 1, 0)? {
            RunEnd::Fault { why: Unresolved::NoMapping, .. } => {}
            other => return Err(alloc::format!("read of a hole: {other:?}, expected no mapping")),
        }
        Ok(())
    })();
    fail_alloc::configure(0, 0);
    proc::exit(name)?;
    r?;
    let now = frame::stats().free;
    ensure!(now == free, "free frames {free} -> {now} after exit");
    Ok(())
}

kernel_test!(expect_fault_passes_only_sigsegv);
/// `expect-fault` passes only for the refusals Linux would SIGSEGV: a real
/// hole and a real read-only page pass; out of memory and a fault the kernel
/// does not resolve (alignment, external abort, TLB conflict: nothing a
/// script can cause, so the run's end is given) are errors that say why.
fn expect_fault_passes_only_sigsegv() -> Result<(), String> {
    use crate::console::expect_fault_verdict_for_tests as verdict;
    use proc::Unresolved;
    let name = "expect_fault_test";
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let ro = proc::mmap(name, "ro", MmapArgs { writable: false, ..super::anon(PAGE_SIZE) })?;
        let end = proc::access(name, op::TOUCH_WRITE, ro, 1, 0)?;
        ensure!(verdict(name, ro, end) == Ok(Ok(())), "a write to a read-only page");
        let hole = ro + 64 * PAGE_SIZE;
        let end = proc::access(name, op::TOUCH_WRITE, hole, 1, 0)?;
        ensure!(verdict(name, hole, end) == Ok(Ok(())), "a write to a hole");
        let end = proc::access(name, op::TOUCH_WRITE, hole, 1, 0)?;
        ensure!(matches!(verdict(name, hole + 8, end), Ok(Err(_))), "a fault elsewhere is a failed assertion");
        for why in [Unresolved::OutOfMemory, Unresolved::NotHandled] {
            let end = RunEnd::Fault { addr: ro, esr: 0x9200_0021, why };
            match verdict(name, ro, end) {
                Err(e) if e.contains(&why.to_string()) => {}
                other => return Err(alloc::format!("{why:?}: {other:?}, expected an error that says why")),
            }
        }
        Ok(())
    })();
    proc::exit(name)?;
    r
}

kernel_test!(syscall_errnos_from_typed_errors);
/// Errnos that string matching got wrong: munmap of the agent is -EINVAL
/// (a bad argument, not a lack of memory), and a clone whose new agent
/// mapping runs out of table memory is -ENOMEM (was -EINVAL: the text
/// "mapping the agent: OutOfMemory" did not contain "out of memory").
fn syscall_errnos_from_typed_errors() -> Result<(), String> {
    use crate::mm::fail_alloc;
    let name = "errno_test";
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let sc = |n: u64, a: [u64; 6]| proc::syscall(name, n, a);
        let got = sc(nr::MUNMAP, [proc::AGENT_VA, PAGE_SIZE, 0, 0, 0, 0])?;
        ensure!(got == -EINVAL, "munmap of the agent: got {got}, expected {}", -EINVAL);
        // Overcommit (OVERCOMMIT_GUESS): more than RAM, private and
        // writable, is -ENOMEM; MAP_NORESERVE maps it, and so does PROT_READ.
        let ram = frame::stats().managed * PAGE_SIZE;
        let big = (ram + (1 << 30)).next_multiple_of(PAGE_SIZE);
        let got = sc(nr::MMAP, [0, big, 3, 0x22, u64::MAX, 0])?;
        ensure!(got == -ENOMEM, "mmap of {big:#x} bytes on {ram:#x} of RAM: got {got}, expected {}", -ENOMEM);
        let got = sc(nr::MMAP, [0, big, 3, 0x22 | proc::syscall::MAP_NORESERVE, u64::MAX, 0])?;
        ensure!(got > 0, "mmap with MAP_NORESERVE: got {got}");
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(got as u64 + big - 8), 8, 9)?, RunEnd::Done),
            "its last bytes"
        );
        ensure!(sc(nr::MUNMAP, [got as u64, big, 0, 0, 0, 0])? == 0, "munmap of it");
        let ro = sc(nr::MMAP, [0, big, 1, 0x22, u64::MAX, 0])?;
        ensure!(ro > 0, "a read-only mapping is not charged: got {ro}");
        let got = sc(nr::MPROTECT, [ro as u64, big, 3, 0, 0, 0])?;
        ensure!(got == -ENOMEM, "mprotect of it to read-write: got {got}, expected {}", -ENOMEM);
        ensure!(sc(nr::MUNMAP, [ro as u64, big, 0, 0, 0, 0])? == 0, "munmap of the read-only one");
        // Anonymous shared memory is charged whatever its protection (its
        // shmem file is, `shmem_acct_size`), unless MAP_NORESERVE; a memfd
        // is not (VM_NORESERVE).
        for prot in [3, 1] {
            let got = sc(nr::MMAP, [0, big, prot, 0x21, u64::MAX, 0])?;
            ensure!(got == -ENOMEM, "shared anonymous mmap of {big:#x}, prot {prot}: got {got}, expected {}", -ENOMEM);
        }
        let sh = sc(nr::MMAP, [0, big, 3, 0x21 | proc::syscall::MAP_NORESERVE, u64::MAX, 0])?;
        ensure!(sh > 0, "shared anonymous mmap with MAP_NORESERVE: got {sh}");
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(sh as u64 + big - 8), 8, 9)?, RunEnd::Done),
            "its last bytes"
        );
        ensure!(sc(nr::MUNMAP, [sh as u64, big, 0, 0, 0, 0])? == 0, "munmap of it");
        let mf = proc::mmap(name, "mf", MmapArgs { memfd: Some("errno_big".into()), shared: true, ..super::anon(big) });
        ensure!(mf.is_ok(), "a memfd mapping of {big:#x} is not charged: {mf:?}");
        proc::munmap(name, mf?, big)?;
        let _ = crate::mm::shmem::remove_unmapped("errno_big");
        // The child's root table comes, its agent's tables do not.
        fail_alloc::fail_after(1);
        fail_alloc::arm(true);
        let got = sc(nr::CLONE, [proc::syscall::SIGCHLD, 0, 0, 0, 0, 0]);
        fail_alloc::arm(false);
        fail_alloc::configure(0, 0);
        let got = got?;
        let why = proc::syscall::LAST_CLONE_ERROR.lock().take();
        ensure!(got == -ENOMEM, "clone out of table memory: got {got} ({why:?}), expected {}", -ENOMEM);
        ensure!(why.is_some_and(|w| w.is_oom()), "clone's reason: {why:?}");
        Ok(())
    })();
    fail_alloc::configure(0, 0);
    proc::exit(name)?;
    r
}

kernel_test!(fork_fails_cleanly_at_every_allocation);
/// `P fork C` with the k-th allocation failing, for k = 0, 1, 2, ... until
/// the fork gets through: each failure is `out of memory` (ENOMEM from
/// clone), no child is left, and every frame and table comes back
/// (Linux's fault-injection style of testing an error path).
fn fork_fails_cleanly_at_every_allocation() -> Result<(), String> {
    use crate::mm::fail_alloc;
    let (parent, child) = ("failfork_p", "failfork_c");
    proc::spawn(parent)?;
    let r = (|| -> Result<(), String> {
        // Memory in several tables: anon pages, a shared page, a THP if the
        // granule has one in reach, and a pinned page (fork copies it early).
        let a = proc::mmap(parent, "a", super::anon(64 * PAGE_SIZE))?;
        ensure!(matches!(proc::access(parent, op::WRITE, a, 64 * PAGE_SIZE, 0x3c)?, RunEnd::Done), "write a");
        let s = proc::mmap(parent, "s", MmapArgs { shared: true, ..super::anon(PAGE_SIZE) })?;
        ensure!(matches!(proc::access(parent, op::WRITE, s, PAGE_SIZE, 0x3d)?, RunEnd::Done), "write s");
        let foll = crate::mm::gup::Foll { write: true, pin: true, longterm: false };
        proc::gup(parent, "failfork_pin", a + 3 * PAGE_SIZE, PAGE_SIZE, foll, false, &|| Ok(()))?;
        let mut k = 0u64;
        loop {
            let free = frame::stats().free;
            fail_alloc::fail_after(k);
            fail_alloc::arm(true);
            let r = proc::fork(parent, child);
            fail_alloc::arm(false);
            fail_alloc::configure(0, 0);
            match r {
                Ok(_) => break,
                Err(e) => {
                    ensure!(e.is_oom(), "fork with allocation {k} failing: {e}, not out of memory");
                    ensure!(e.to_string().contains("out of memory"), "message: {e}");
                    ensure!(!proc::exists(child), "a failed fork left `{child}` behind");
                    crate::console::commands::invariants().map_err(|e| alloc::format!("after failure {k}: {e}"))?;
                    let now = frame::stats().free;
                    ensure!(now == free, "fork failing at allocation {k}: free frames {free} -> {now}");
                }
            }
            k += 1;
            ensure!(k < 10_000, "fork never got through");
        }
        ensure!(k > 1, "the fork made only {k} allocations: the test covers nothing");
        // The child that got through is whole.
        ensure!(matches!(proc::access(child, op::CHECK, a, 64 * PAGE_SIZE, 0x3c)?, RunEnd::Done), "child's a");
        ensure!(matches!(proc::access(child, op::CHECK, s, PAGE_SIZE, 0x3d)?, RunEnd::Done), "child's s");
        proc::exit(child)?;
        Ok(())
    })();
    fail_alloc::configure(0, 0);
    let _ = crate::mm::gup::drop_handle("failfork_pin");
    if proc::exists(child) {
        proc::exit(child)?;
    }
    proc::exit(parent)?;
    r
}

kernel_test!(el0_cannot_reach_kernel_memory);
/// The EL0 agent itself tries to read and write kernel text, data, the
/// linear map and MMIO: every access must be a real permission fault from a
/// lower EL (TTBR1 leaves have no EL0 access), the process survives, and the
/// kernel's bytes are unchanged.
fn el0_cannot_reach_kernel_memory() -> Result<(), String> {
    use crate::arch::aarch64::esr::{Esr, ExceptionClass, FaultStatus};
    use crate::mm::layout::{io_virt, phys_to_virt};
    let name = "isolation_test";
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        static SECRET: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0x5ec2_e75e_c2e7);
        let ram = crate::kmain::boot().board.ram[0].start;
        let uart = crate::kmain::boot().board.uart.as_ref().ok_or("no uart")?.regs[0].start;
        let targets = [
            ("kernel text", crate::sym_addr!(__kernel_start)),
            ("kernel data", core::ptr::addr_of!(SECRET) as u64),
            ("linear map", phys_to_virt(ram).as_u64() + 0x2000),
            ("MMIO", io_virt(uart).as_u64()),
        ];
        for (what, va) in targets {
            // TOUCH_READ is a lone load; WRITE a lone store.
            for (opc, write) in [(op::TOUCH_READ, false), (op::WRITE, true)] {
                match proc::access(name, opc, VirtAddr::new(va), 1, 0xee)? {
                    RunEnd::Fault { addr, esr, why } => {
                        let e = Esr(esr);
                        ensure!(why == proc::Unresolved::NoMapping, "{what}: reason {why}, not `no mapping`");
                        ensure!(addr == VirtAddr::new(va), "{what}: fault at {addr:#x}, not {va:#x}");
                        ensure!(e.ec() == ExceptionClass::DataAbortLowerEl, "{what}: {e}");
                        ensure!(
                            matches!(e.fault_status(), Some(FaultStatus::Permission(_))),
                            "{what}: expected a permission fault, got {e}"
                        );
                        ensure!(e.wnr() == write, "{what}: WnR wrong: {e}");
                    }
                    other => {
                        return Err(alloc::format!(
                            "EL0 {} of {what} at {va:#x} was not refused: {other:?}",
                            if write { "write" } else { "read" }
                        ));
                    }
                }
            }
        }
        ensure!(SECRET.load(core::sync::atomic::Ordering::Relaxed) == 0x5ec2_e75e_c2e7, "kernel data changed");
        // And the process is still usable afterwards.
        let va = proc::mmap(name, "after", super::anon(PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, va, 16, 7)?, RunEnd::Done), "process unusable after the faults");
        Ok(())
    })();
    proc::exit(name)?;
    r
}

kernel_test!(syscalls_bad_arguments_get_errors);
fn syscalls_bad_arguments_get_errors() -> Result<(), String> {
    let free_before = frame::stats().free;
    let name = "syscall_test";
    proc::spawn(name)?;
    let r = (|| -> Result<(), String> {
        let sc = |n: u64, a: [u64; 6]| proc::syscall(name, n, a);
        let pid = sc(nr::GETPID, [0; 6])?;
        ensure!(pid > 0, "getpid returned {pid}");

        let va = proc::mmap(name, "buf", super::anon(16 * PAGE_SIZE))?;
        ensure!(matches!(proc::access(name, op::WRITE, va, 6, b'h')?, RunEnd::Done), "EL0 write failed");
        ensure!(sc(nr::WRITE, [1, va.as_u64(), 6, 0, 0, 0])? == 6, "write of 6 good bytes");
        // A page the process never touched: the uaccess fault is demand-filled.
        let fresh = va + 8 * PAGE_SIZE;
        ensure!(sc(nr::WRITE, [1, fresh.as_u64(), 4, 0, 0, 0])? == 4, "write from an unpopulated page");

        let cases: [(&str, u64, [u64; 6], i64); 10] = [
            ("kernel pointer", nr::WRITE, [1, 0xffff_8000_0000_0000, 8, 0, 0, 0], -EFAULT),
            ("unmapped user pointer", nr::WRITE, [1, 0x7000_0000, 8, 0, 0, 0], -EFAULT),
            ("pointer + length overflows", nr::WRITE, [1, u64::MAX - 3, 8, 0, 0, 0], -EFAULT),
            (
                "buffer runs into the guard gap",
                nr::WRITE,
                [1, (va + 16 * PAGE_SIZE - 10).as_u64(), 100, 0, 0, 0],
                -EFAULT,
            ),
            ("bad fd", nr::WRITE, [5, va.as_u64(), 1, 0, 0, 0], -EBADF),
            ("mmap of 0 bytes", nr::MMAP, [0, 0, 3, 0x22, u64::MAX, 0], -EINVAL),
            ("mmap larger than the address space", nr::MMAP, [0, 1 << 62, 3, 0x22, u64::MAX, 0], -ENOMEM),
            ("mmap PROT_EXEC", nr::MMAP, [0, 8192, 4, 0x22, u64::MAX, 0], -EINVAL),
            ("mmap of a descriptor that is not open", nr::MMAP, [0, 8192, 3, 0x01, 3, 0], -EBADF),
            ("unknown syscall", 9999, [0; 6], -ENOSYS),
        ];
        for (what, n, a, want) in cases {
            let got = sc(n, a)?;
            ensure!(got == want, "{what}: got {got}, expected {want}");
        }
        // A good mmap gives memory the process can use at EL0.
        let m = sc(nr::MMAP, [0, 2 * PAGE_SIZE, 3, 0x22, u64::MAX, 0])?;
        ensure!(m > 0, "mmap failed: {m}");
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(m as u64), 2 * PAGE_SIZE, 0x77)?, RunEnd::Done),
            "EL0 write to mmap'd memory"
        );
        ensure!(
            matches!(proc::access(name, op::CHECK, VirtAddr::new(m as u64), 2 * PAGE_SIZE, 0x77)?, RunEnd::Done),
            "EL0 check of mmap'd memory"
        );
        let m = m as u64;
        // mprotect and munmap through system calls, and their bad arguments.
        ensure!(sc(nr::MPROTECT, [m, PAGE_SIZE, 1, 0, 0, 0])? == 0, "mprotect read-only");
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(m), 1, 1)?, RunEnd::Fault { .. }),
            "write after mprotect(PROT_READ) succeeded"
        );
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(m + PAGE_SIZE), 1, 1)?, RunEnd::Done),
            "the other page was protected too"
        );
        let bad: [(&str, u64, [u64; 6], i64); 6] = [
            ("mprotect misaligned", nr::MPROTECT, [m + 1, PAGE_SIZE, 1, 0, 0, 0], -EINVAL),
            ("mprotect PROT_EXEC", nr::MPROTECT, [m, PAGE_SIZE, 4, 0, 0, 0], -EINVAL),
            ("mprotect of unmapped memory", nr::MPROTECT, [0x7000_0000, PAGE_SIZE, 1, 0, 0, 0], -ENOMEM),
            ("mprotect of the agent", nr::MPROTECT, [proc::AGENT_VA, PAGE_SIZE, 3, 0, 0, 0], -EINVAL),
            ("munmap of length 0", nr::MUNMAP, [m, 0, 0, 0, 0, 0], -EINVAL),
            ("munmap past the user top", nr::MUNMAP, [!(PAGE_SIZE - 1), PAGE_SIZE, 0, 0, 0, 0], -EINVAL),
        ];
        for (what, n, a, want) in bad {
            let got = sc(n, a)?;
            ensure!(got == want, "{what}: got {got}, expected {want}");
        }
        // MAP_SHARED | MAP_ANONYMOUS: shmem that a forked child shares.
        let sh = sc(nr::MMAP, [0, PAGE_SIZE, 3, 0x21, u64::MAX, 0])?;
        ensure!(sh > 0, "shared anonymous mmap failed: {sh}");
        let sh = sh as u64;
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(sh), PAGE_SIZE, 0x31)?, RunEnd::Done),
            "EL0 write to shared memory"
        );
        let child = "syscall_test_child";
        proc::fork(name, child)?;
        let shared_ok = (|| -> Result<(), String> {
            ensure!(
                matches!(proc::access(child, op::CHECK, VirtAddr::new(sh), PAGE_SIZE, 0x31)?, RunEnd::Done),
                "the child does not see the parent's shared bytes"
            );
            ensure!(
                matches!(proc::access(child, op::WRITE, VirtAddr::new(sh), 16, 0x32)?, RunEnd::Done),
                "child write to shared memory"
            );
            ensure!(
                matches!(proc::access(name, op::CHECK, VirtAddr::new(sh), 16, 0x32)?, RunEnd::Done),
                "the parent does not see the child's write to shared memory"
            );
            Ok(())
        })();
        proc::exit(child)?;
        shared_ok?;
        ensure!(sc(nr::MUNMAP, [sh, PAGE_SIZE, 0, 0, 0, 0])? == 0, "munmap of shared memory");
        // memfd_create + ftruncate + mmap(fd): two shared views see each
        // other's stores, a private view COWs, an offset maps the file's
        // second page; the mappings outlive close(); bad calls get errors.
        let name_va = va + 4 * PAGE_SIZE;
        ensure!(matches!(proc::access(name, op::WRITE, name_va, 3, b'm')?, RunEnd::Done), "writing the memfd name");
        ensure!(matches!(proc::access(name, op::WRITE, name_va + 3, 1, 0)?, RunEnd::Done), "writing the name's NUL");
        let fd = sc(nr::MEMFD_CREATE, [name_va.as_u64(), 0, 0, 0, 0, 0])?;
        ensure!(fd >= 3, "memfd_create returned {fd}");
        let fd = fd as u64;
        ensure!(sc(nr::FTRUNCATE, [fd, 2 * PAGE_SIZE, 0, 0, 0, 0])? == 0, "ftruncate to two pages");
        let map = |flags: u64, off: u64, len: u64| sc(nr::MMAP, [0, len, 3, flags, fd, off]);
        let v1 = map(0x01, 0, 2 * PAGE_SIZE)?;
        let v2 = map(0x01, 0, 2 * PAGE_SIZE)?;
        let vp = map(0x02, 0, 2 * PAGE_SIZE)?;
        let vo = map(0x01, PAGE_SIZE, PAGE_SIZE)?;
        ensure!(v1 > 0 && v2 > 0 && vp > 0 && vo > 0, "mmap of the memfd failed: {v1} {v2} {vp} {vo}");
        let (v1, v2, vp, vo) = (v1 as u64, v2 as u64, vp as u64, vo as u64);
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(v1), 2 * PAGE_SIZE, 0x71)?, RunEnd::Done),
            "EL0 write to the memfd"
        );
        ensure!(
            matches!(proc::access(name, op::CHECK, VirtAddr::new(v2), 2 * PAGE_SIZE, 0x71)?, RunEnd::Done),
            "the second shared view misses the first's stores"
        );
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(vo), 16, 0x72)?, RunEnd::Done),
            "EL0 write at file offset one page"
        );
        ensure!(
            matches!(proc::access(name, op::CHECK, VirtAddr::new(v1 + PAGE_SIZE), 16, 0x72)?, RunEnd::Done),
            "the offset mapping is not the file's second page"
        );
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(vp), 16, 0x73)?, RunEnd::Done),
            "EL0 write to the private view"
        );
        ensure!(
            matches!(proc::access(name, op::CHECK, VirtAddr::new(v1), 16, 0x71)?, RunEnd::Done),
            "a private view's write reached the file"
        );
        ensure!(sc(nr::CLOSE, [fd, 0, 0, 0, 0, 0])? == 0, "close");
        ensure!(
            matches!(proc::access(name, op::CHECK, VirtAddr::new(v2), 16, 0x71)?, RunEnd::Done),
            "the mapping did not outlive close()"
        );
        let bad: [(&str, u64, [u64; 6], i64); 7] = [
            ("close of a closed fd", nr::CLOSE, [fd, 0, 0, 0, 0, 0], -EBADF),
            ("mmap of a closed fd", nr::MMAP, [0, PAGE_SIZE, 3, 0x01, fd, 0], -EBADF),
            ("ftruncate of a closed fd", nr::FTRUNCATE, [fd, PAGE_SIZE, 0, 0, 0, 0], -EBADF),
            ("memfd_create with a kernel pointer", nr::MEMFD_CREATE, [0xffff_8000_0000_0000, 0, 0, 0, 0, 0], -EFAULT),
            ("memfd_create with unknown flags", nr::MEMFD_CREATE, [name_va.as_u64(), 0x100, 0, 0, 0, 0], -EINVAL),
            ("mmap of stdout", nr::MMAP, [0, PAGE_SIZE, 3, 0x01, 1, 0], -EBADF),
            ("close of stdin", nr::CLOSE, [0, 0, 0, 0, 0, 0], -EBADF),
        ];
        for (what, n, a, want) in bad {
            let got = sc(n, a)?;
            ensure!(got == want, "{what}: got {got}, expected {want}");
        }
        // A name longer than 249 bytes is refused.
        ensure!(matches!(proc::access(name, op::WRITE, name_va, 300, b'n')?, RunEnd::Done), "writing a long name");
        ensure!(matches!(proc::access(name, op::WRITE, name_va + 300, 1, 0)?, RunEnd::Done), "its NUL");
        ensure!(
            sc(nr::MEMFD_CREATE, [name_va.as_u64(), 0, 0, 0, 0, 0])? == -EINVAL,
            "a 300-byte memfd name was accepted"
        );
        // A descriptor still open at exit is closed by the exit (the frame
        // count below checks that its file goes).
        ensure!(matches!(proc::access(name, op::WRITE, name_va, 1, 0)?, RunEnd::Done), "an empty name");
        let fd2 = sc(nr::MEMFD_CREATE, [name_va.as_u64(), 1, 0, 0, 0, 0])?;
        ensure!(fd2 == fd as i64, "the lowest free descriptor is reused: got {fd2}, expected {fd}");
        ensure!(sc(nr::FTRUNCATE, [fd2 as u64, PAGE_SIZE, 0, 0, 0, 0])? == 0, "ftruncate of the second memfd");
        ensure!(sc(nr::FTRUNCATE, [fd2 as u64, 0, 0, 0, 0, 0])? == -EINVAL, "shrinking is refused");
        let v3 = sc(nr::MMAP, [0, PAGE_SIZE, 3, 0x01, fd2 as u64, 0])?;
        ensure!(
            v3 > 0 && matches!(proc::access(name, op::WRITE, VirtAddr::new(v3 as u64), PAGE_SIZE, 0x74)?, RunEnd::Done),
            "the second memfd is not usable"
        );
        // madvise: DONTNEED zaps (the next read sees zeroes), the THP hints
        // are accepted on mapped memory, and bad arguments get errors.
        ensure!(
            matches!(proc::access(name, op::WRITE, VirtAddr::new(m + PAGE_SIZE), PAGE_SIZE, 0x5c)?, RunEnd::Done),
            "EL0 write before madvise"
        );
        ensure!(sc(nr::MADVISE, [m + PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED, 0, 0, 0])? == 0, "madvise(MADV_DONTNEED)");
        ensure!(
            matches!(proc::access(name, op::CHECK, VirtAddr::new(m + PAGE_SIZE), PAGE_SIZE, 0)?, RunEnd::Done),
            "after MADV_DONTNEED the page must read as zeroes"
        );
        ensure!(sc(nr::MADVISE, [m, 2 * PAGE_SIZE, MADV_HUGEPAGE, 0, 0, 0])? == 0, "madvise(MADV_HUGEPAGE)");
        ensure!(sc(nr::MADVISE, [m, 2 * PAGE_SIZE, MADV_NOHUGEPAGE, 0, 0, 0])? == 0, "madvise(MADV_NOHUGEPAGE)");
        ensure!(sc(nr::MADVISE, [m, 0, MADV_DONTNEED, 0, 0, 0])? == 0, "madvise of length 0");
        let bad: [(&str, [u64; 6], i64); 5] = [
            ("madvise misaligned", [m + 1, PAGE_SIZE, MADV_DONTNEED, 0, 0, 0], -EINVAL),
            ("madvise with an unknown advice", [m, PAGE_SIZE, 999, 0, 0, 0], -EINVAL),
            ("madvise of unmapped memory", [0x7000_0000, PAGE_SIZE, MADV_DONTNEED, 0, 0, 0], -ENOMEM),
            ("madvise hugepage over a hole", [m, 4 * PAGE_SIZE, MADV_HUGEPAGE, 0, 0, 0], -ENOMEM),
            ("madvise past the user top", [!(PAGE_SIZE - 1), PAGE_SIZE, MADV_DONTNEED, 0, 0, 0], -EINVAL),
        ];
        for (what, a, want) in bad {
            let got = sc(nr::MADVISE, a)?;
            ensure!(got == want, "{what}: got {got}, expected {want}");
        }
        ensure!(sc(nr::MUNMAP, [m, 2 * PAGE_SIZE, 0, 0, 0, 0])? == 0, "munmap");
        ensure!(
            matches!(proc::access(name, op::TOUCH_READ, VirtAddr::new(m), 1, 0)?, RunEnd::Fault { .. }),
            "read after munmap succeeded"
        );
        Ok(())
    })();
    proc::exit(name)?;
    r?;
    let free_after = frame::stats().free;
    ensure!(free_after == free_before, "free frames {free_before} -> {free_after} after exit");
    Ok(())
}
