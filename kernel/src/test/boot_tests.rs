//! Foundation tests: the MMU is really on, W^X really holds (checked by
//! taking real aborts), unmapped addresses fault at the expected level,
//! blocks are where they should be, CPUs came up.

use alloc::string::String;
use core::sync::atomic::Ordering;

use crate::arch::aarch64::sysreg;

use crate::arch::aarch64::cpu::{self, AtOp, AtResult};
use crate::arch::aarch64::esr::{Esr, ExceptionClass, FaultStatus};
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE};
use crate::arch::aarch64::memory::FIXMAP_BASE;
use crate::arch::aarch64::regs::{TCR_BASE, mair, tcr};
use crate::arch::aarch64::uaccess::{probe_exec, probe_read_u8, probe_write_u8};
use crate::arch::percpu;
use crate::ensure;
use crate::kmain::boot;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::Kind;
use crate::mm::kernel_pgtable;
use crate::mm::layout::{io_virt, phys_to_virt};
use crate::mm::pgtable::Translation;
use crate::sym_addr;

kernel_test!(boot_running_at_el1);
fn boot_running_at_el1() -> Result<(), String> {
    let el = sysreg::current_el();
    ensure!(el == 1, "CurrentEL is {el}");
    Ok(())
}

kernel_test!(boot_entry_el_matches_request);
/// `pagelab.expect-el=N` must match the EL we were entered at. qemu-run.sh
/// passes it on every boot (and fails a kernel-test run where this test
/// skipped); without it there is nothing to compare with.
fn boot_entry_el_matches_request() -> Result<(), String> {
    let b = boot();
    ensure!(b.boot_el == 1 || b.boot_el == 2, "entered at EL{}", b.boot_el);
    let Some(want) = b.board.bootarg("pagelab.expect-el") else {
        return super::cannot_apply("no pagelab.expect-el=N on the command line to compare the entry EL with");
    };
    ensure!(want == alloc::format!("{}", b.boot_el), "asked for EL{want} entry but entered at EL{}", b.boot_el);
    Ok(())
}

kernel_test!(mmu_on_with_final_tables);
fn mmu_on_with_final_tables() -> Result<(), String> {
    use crate::arch::aarch64::regs::sctlr;
    let s = sysreg::sctlr_el1();
    ensure!(s & sctlr::M != 0, "SCTLR_EL1.M is clear");
    ensure!(s & sctlr::C != 0 && s & sctlr::I != 0, "caches off");
    let (root, _) = kernel_pgtable::roots();
    let ttbr1 = sysreg::ttbr1_el1() & 0x0000_ffff_ffff_fffe;
    ensure!(ttbr1 == root.as_u64(), "TTBR1_EL1 {ttbr1:#x} is not the final kernel root {:#x}", root.as_u64());
    Ok(())
}

kernel_test!(mmu_registers_as_programmed);
fn mmu_registers_as_programmed() -> Result<(), String> {
    let (m, t, s) = crate::arch::aarch64::mmu::expected();
    // HA and HD are what the kernel turned on after `program` (pagelab.hw-af=1,
    // pagelab.hw-dbm=1, or a test that switches them and restores them).
    let (ha, hd) = (tcr::HA, tcr::HD);
    let hw = if crate::mm::desc::hw_af() { ha } else { 0 } | if crate::mm::desc::hw_dbm() { ha | hd } else { 0 };
    ensure!(
        (sysreg::mair_el1(), sysreg::tcr_el1(), sysreg::sctlr_el1()) == (m, t | hw, s),
        "live registers differ from the aarch64-cpu definitions with HA/HD as mm::desc records them: TCR {:#x}, expected {:#x}",
        sysreg::tcr_el1(),
        t | hw
    );
    // SPAN is RES1 in the boot value and cleared once PAN is enabled.
    let span = crate::arch::aarch64::regs::sctlr::SPAN;
    ensure!(
        m == mair::VALUE && s | span == crate::arch::aarch64::regs::sctlr::MMU_ON,
        "aarch64-cpu and regs.rs constants differ"
    );
    ensure!(
        (s & span == 0) == crate::arch::cpu::has_pan(),
        "SCTLR_EL1.SPAN must be clear exactly when the CPU has PAN"
    );
    let mair_el1 = sysreg::mair_el1();
    ensure!(mair_el1 == mair::VALUE, "MAIR_EL1 {mair_el1:#x} != {:#x}", mair::VALUE);
    let tcr = sysreg::tcr_el1();
    // IPS, AS, HA and HD (hardware access flag and dirty state) vary at run time.
    let fixed_mask = !((7u64 << 32) | (1 << 36) | ha | hd);
    ensure!(tcr & fixed_mask == TCR_BASE & fixed_mask, "TCR_EL1 {tcr:#x} vs {TCR_BASE:#x}");
    let t0sz = 64 - crate::arch::aarch64::regs::USER_VA_BITS as u64;
    // TCR_EL1.T0SZ [5:0], T1SZ [21:16], IPS [34:32].
    let (t0, t1, ips) = (tcr & 0x3f, (tcr >> 16) & 0x3f, (tcr >> 32) & 7);
    ensure!(t1 == 16, "48-bit kernel VA (T1SZ {t1})");
    ensure!(t0 == t0sz, "T0SZ {t0} for a {}-bit user VA, expected {t0sz}", 64 - t0sz);
    let parange = sysreg::pa_range();
    ensure!(ips == parange.min(5), "IPS {ips} but PARange {parange}");
    Ok(())
}

fn expect_permission_fault(r: Result<(), (u64, u64)>, addr: u64, write: bool) -> Result<(), String> {
    let (esr, far) = match r {
        Ok(()) => return Err(alloc::format!("access to {addr:#x} did not fault")),
        Err(x) => x,
    };
    let esr = Esr(esr);
    ensure!(matches!(esr.fault_status(), Some(FaultStatus::Permission(_))), "expected a permission fault, got {esr}");
    if write {
        ensure!(
            esr.ec() == ExceptionClass::DataAbortSameEl && esr.wnr(),
            "expected an EL1 write data abort, got {esr}"
        );
    } else {
        ensure!(esr.ec() == ExceptionClass::InstructionAbortSameEl, "expected an EL1 instruction abort, got {esr}");
    }
    ensure!(far == addr, "FAR {far:#x} != {addr:#x}");
    Ok(())
}

kernel_test!(wx_kernel_text_not_writable);
fn wx_kernel_text_not_writable() -> Result<(), String> {
    let addr = wx_kernel_text_not_writable as *const () as u64;
    let before = probe_read_u8(addr).map_err(|_| "cannot read text")?;
    // SAFETY: must fault; if it does not, the test fails (and writes back the same byte).
    let r = unsafe { probe_write_u8(addr, before) };
    expect_permission_fault(r, addr, true)?;
    ensure!(probe_read_u8(addr) == Ok(before), "text changed");
    Ok(())
}

static RODATA_PROBE: u64 = 0x5a5a_5a5a;

kernel_test!(wx_rodata_not_writable);
fn wx_rodata_not_writable() -> Result<(), String> {
    let addr = core::ptr::addr_of!(RODATA_PROBE) as u64;
    ensure!(addr >= sym_addr!(__rodata_start) && addr < sym_addr!(__rodata_end), "probe not in .rodata");
    // SAFETY: must fault.
    let r = unsafe { probe_write_u8(addr, 0x5a) };
    expect_permission_fault(r, addr, true)
}

/// A `ret` instruction in writable data.
static mut RET_IN_DATA: [u32; 4] = [0xd65f03c0; 4];

kernel_test!(wx_data_not_executable);
fn wx_data_not_executable() -> Result<(), String> {
    let addr = core::ptr::addr_of!(RET_IN_DATA) as u64;
    ensure!(addr >= sym_addr!(__data_start) && addr < sym_addr!(__data_end), "probe not in data");
    // SAFETY: it is a `ret`; the call returns if executable, else aborts (recovered).
    let r = unsafe { probe_exec(addr) };
    expect_permission_fault(r, addr, false)
}

kernel_test!(wx_linear_map_not_executable);
fn wx_linear_map_not_executable() -> Result<(), String> {
    let pa = crate::mm::frame::alloc_zeroed(0, crate::mm::frame::Owner::Test).ok_or("out of frames")?;
    let va = phys_to_virt(pa).as_u64();
    // SAFETY: a fresh frame; write a `ret` into it through the linear map.
    unsafe { (va as *mut u32).write_volatile(0xd65f03c0) };
    // SAFETY: it is a `ret`.
    let r = unsafe { probe_exec(va) };
    crate::mm::frame::free(pa, 0, crate::mm::frame::Owner::Test).map_err(|e| alloc::format!("{e:?}"))?;
    expect_permission_fault(r, va, false)
}

kernel_test!(wx_no_leaf_writable_and_executable);
fn wx_no_leaf_writable_and_executable() -> Result<(), String> {
    let mut leaves = 0;
    let mut bad = None;
    kernel_pgtable::with_tables(|t| {
        t.walk(true, &mut |e| {
            if let Kind::Leaf(_) = e.kind {
                leaves += 1;
                let p = e.desc.perms();
                if !p.read_only && !p.pxn {
                    bad = Some(e.va.as_u64());
                }
            }
        })
    });
    ensure!(leaves > 0, "no leaves found");
    ensure!(bad.is_none(), "writable+executable leaf at {:#x}", bad.unwrap());
    Ok(())
}

fn expect_translation_fault(addr: u64, level: i8) -> Result<(), String> {
    match probe_read_u8(addr) {
        Ok(v) => Err(alloc::format!("read of {addr:#x} succeeded ({v:#x})")),
        Err((esr, far)) => {
            let esr = Esr(esr);
            ensure!(
                esr.fault_status() == Some(FaultStatus::Translation(level)),
                "expected translation fault level {level}, got {esr}"
            );
            ensure!(!esr.wnr(), "read reported as write");
            ensure!(far == addr, "FAR {far:#x} != {addr:#x}");
            Ok(())
        }
    }
}

kernel_test!(fault_unmapped_top_level_hole);
/// A hole at the top of the TTBR1 half faults at the first level that has an
/// empty entry: the start level for 4K (L0) and 64K (L1). With 16K, level 0
/// has only two entries and both are in use (linear map/MMIO and the image),
/// so the first empty entry is at level 1.
fn fault_unmapped_top_level_hole() -> Result<(), String> {
    let addr = 0xffff_6800_0000_0000u64;
    let want = match GRANULE {
        crate::arch::aarch64::granule::Granule::K16 => crate::arch::aarch64::granule::START_LEVEL + 1,
        _ => crate::arch::aarch64::granule::START_LEVEL,
    };
    let lvl = match kernel_pgtable::with_tables(|t| t.translate(VirtAddr::new(addr))) {
        Translation::Fault { level, .. } => level,
        Translation::Mapped { .. } => return Err("test address is mapped".into()),
    };
    ensure!(lvl == want, "software walk stops at level {lvl}, expected {want}");
    expect_translation_fault(addr, lvl as i8)
}

kernel_test!(fault_unmapped_level3_stack_guard);
fn fault_unmapped_level3_stack_guard() -> Result<(), String> {
    // The guard below CPU 0's stack is unmapped inside a populated level-3 table.
    let (lo, _) = kernel_pgtable::stack_range(0);
    let guard = lo - PAGE_SIZE;
    expect_translation_fault(guard.as_u64(), 3)?;
    let (lo1, _) = kernel_pgtable::stack_range(1);
    expect_translation_fault((lo1 - 8).as_u64(), 3)
}

kernel_test!(fault_dtb_fixmap_gone);
fn fault_dtb_fixmap_gone() -> Result<(), String> {
    // The boot-time DTB window must not survive the switch to the final tables.
    let addr = FIXMAP_BASE + (boot().dtb_pa & (PAGE_SIZE - 1));
    match kernel_pgtable::with_tables(|t| t.translate(VirtAddr::new(addr))) {
        Translation::Fault { level, .. } => expect_translation_fault(addr, level as i8),
        Translation::Mapped { .. } => Err("fixmap still mapped".into()),
    }
}

kernel_test!(linear_map_uses_blocks);
fn linear_map_uses_blocks() -> Result<(), String> {
    let mut checked = 0;
    for r in &boot().board.ram {
        // Expected leaf level at each aligned point the mapper could use a block for.
        for level in [1u32, 2] {
            if !GRANULE.block_allowed(level) {
                continue;
            }
            let sz = GRANULE.level_size(level);
            let first = (r.start.as_u64() + sz - 1) & !(sz - 1);
            if first + sz > r.end.as_u64() {
                continue;
            }
            // The largest allowed block wins: a 2M probe inside a 1G-mappable GiB is level 1.
            let probe = first;
            let expected = if level == 2 && GRANULE.block_allowed(1) {
                let g = GRANULE.level_size(1);
                let gb = probe & !(g - 1);
                if gb >= r.start.as_u64() && gb + g <= r.end.as_u64() { 1 } else { 2 }
            } else {
                level
            };
            let va = phys_to_virt(PhysAddr::new(probe)).as_u64();
            match kernel_pgtable::with_tables(|t| t.translate(VirtAddr::new(va))) {
                Translation::Mapped { level: l, pa, .. } => {
                    ensure!(pa.as_u64() == probe, "linear map of {probe:#x} points at {:#x}", pa.as_u64());
                    ensure!(l == expected, "PA {probe:#x} mapped at level {l}, expected level {expected}");
                    checked += 1;
                }
                t => return Err(alloc::format!("PA {probe:#x} not in the linear map: {t:?}")),
            }
            // The MMU agrees.
            match cpu::at(AtOp::S1E1W, va + 0x123) {
                AtResult::Ok { pa, .. } => ensure!(pa == probe + 0x123, "AT says {pa:#x}"),
                AtResult::Fault { fst, .. } => {
                    return Err(alloc::format!("AT faults on {va:#x}: {}", FaultStatus::from_fsc(fst)));
                }
            }
        }
    }
    if checked == 0 {
        // No RAM region can hold even one block (e.g. 128 MiB with 64K pages,
        // whose blocks are 512 MiB): then RAM must be mapped with pages.
        for r in &boot().board.ram {
            let va = phys_to_virt(r.start).as_u64();
            match kernel_pgtable::with_tables(|t| t.translate(VirtAddr::new(va))) {
                Translation::Mapped { level, pa, .. } => {
                    ensure!(
                        pa == r.start && level == 3,
                        "RAM at {} mapped at level {level} (PA {pa}), expected pages",
                        r.start
                    )
                }
                t => return Err(alloc::format!("RAM at {} not in the linear map: {t:?}", r.start)),
            }
        }
    }
    Ok(())
}

kernel_test!(mmio_is_device_memory);
fn mmio_is_device_memory() -> Result<(), String> {
    let u = boot().board.uart.as_ref().ok_or("no UART")?;
    let va = io_virt(u.regs[0].start).as_u64();
    match kernel_pgtable::with_tables(|t| t.translate(VirtAddr::new(va))) {
        Translation::Mapped { desc, .. } => {
            ensure!(desc.attr_index() == mair::DEVICE_NGNRE, "UART mapped with attribute index {}", desc.attr_index());
            ensure!(desc.perms().pxn && desc.perms().uxn, "device memory executable");
        }
        t => return Err(alloc::format!("UART not mapped: {t:?}")),
    }
    match cpu::at(AtOp::S1E1R, va) {
        AtResult::Ok { attr, pa } => {
            ensure!(attr == 0x04, "PAR_EL1 attributes {attr:#x}, expected Device-nGnRE (0x04)");
            ensure!(pa == u.regs[0].start.as_u64(), "AT PA {pa:#x}");
        }
        AtResult::Fault { fst, .. } => return Err(alloc::format!("AT faults: {fst:#x}")),
    }
    Ok(())
}

kernel_test!(walker_agrees_with_at_on_kernel_addresses);
/// The MMU's own `AT` agrees with the software walk and with what the
/// kernel asked its tables to map ([`kernel_pgtable::image_sections`], the linear map
/// of RAM read-write, the UART as Device-nGnRE, nothing elsewhere) on a
/// sample of kernel addresses: every page of the image, samples of the
/// linear map, the UART, holes. Memory type and shareability come from
/// PAR_EL1.
fn walker_agrees_with_at_on_kernel_addresses() -> Result<(), String> {
    use crate::mm::desc::{LeafAttrs, TableAttrs};
    use crate::mm::pgtable::atcheck::{self, Access, Request};
    let exact = |pa: u64, attrs: LeafAttrs| Request::Exact { pa: PhysAddr::new(pa), attrs, limits: TableAttrs::NONE };
    let mut addrs: alloc::vec::Vec<(u64, Request)> = alloc::vec::Vec::new();
    for (_, lo, hi, attrs) in kernel_pgtable::image_sections() {
        let mut a = lo.align_down(PAGE_SIZE);
        while a < hi {
            addrs.push(((a + 0x18).as_u64(), exact(kernel_pgtable::kimage_to_phys(a + 0x18).as_u64(), attrs)));
            a += PAGE_SIZE;
        }
    }
    for r in &boot().board.ram {
        let step = (r.size() / 64).max(PAGE_SIZE) & !(PAGE_SIZE - 1);
        let mut p = r.start.as_u64();
        while p < r.end.as_u64() {
            addrs.push((phys_to_virt(PhysAddr::new(p)).as_u64() + 8, exact(p + 8, LeafAttrs::KERNEL_RW)));
            p += step;
        }
        addrs.push((phys_to_virt(r.end).as_u64(), Request::Unmapped));
    }
    if let Some(u) = boot().board.uart.as_ref() {
        let pa = u.regs[0].start.as_u64();
        addrs.push((io_virt(PhysAddr::new(pa)).as_u64(), exact(pa, LeafAttrs::KERNEL_DEVICE)));
    }
    for hole in [0xffff_6800_0000_0000, FIXMAP_BASE, 0xffff_ffff_ffff_f000] {
        addrs.push((hole, Request::Unmapped));
    }
    let hw = crate::mm::pgtable::HwUpdates { af: cpu::hw_af_enabled(), dirty: cpu::hw_dirty_enabled() };
    let mut mismatches = 0;
    let mut first = String::new();
    for (va, req) in &addrs {
        let walked = kernel_pgtable::with_tables(|t| t.translate_with_limits(VirtAddr::new(*va)));
        let mut r = atcheck::check_exec(&walked, req);
        for access in [Access { el0: false, write: false }, Access { el0: false, write: true }] {
            r = r.and_then(|()| atcheck::check(&walked, req, access, hw, atcheck::observe(access, VirtAddr::new(*va))));
        }
        if let Err(m) = r {
            mismatches += 1;
            if first.is_empty() {
                first = alloc::format!("{va:#x}: {m}");
            }
        }
    }
    ensure!(mismatches == 0, "{mismatches} of {} addresses disagree; first: {first}", addrs.len());
    Ok(())
}

kernel_test!(smp_all_cpus_online);
fn smp_all_cpus_online() -> Result<(), String> {
    let want = boot().board.cpus.len().min(crate::arch::aarch64::boot::MAX_CPUS);
    let online = percpu::ONLINE.load(Ordering::Acquire);
    ensure!(online == want, "{online} CPUs online, devicetree lists {want}");
    Ok(())
}

static WORK_DONE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn secondary_work() {
    // Runs on the secondary with its own MMU state: read through the linear
    // map and check the translation via AT on that CPU.
    let id = percpu::this_cpu().id as u64;
    let ok = sysreg::sctlr_el1() & crate::arch::aarch64::regs::sctlr::M != 0
        && matches!(cpu::at(AtOp::S1E1R, sym_addr!(__kernel_start)), AtResult::Ok { .. });
    WORK_DONE.fetch_or(if ok { 1 << id } else { 1 << (32 + id) }, Ordering::AcqRel);
}

kernel_test!(smp_secondary_runs_work);
/// Every secondary CPU runs work sent to it, with its MMU on and the kernel
/// image translating there.
fn smp_secondary_runs_work() -> Result<(), String> {
    let n = percpu::ONLINE.load(Ordering::Acquire);
    if n < 2 {
        return super::cannot_apply("one CPU: no secondary to run work; this runs with --smp 2 or more");
    }
    WORK_DONE.store(0, Ordering::Release);
    for id in 1..n {
        ensure!(crate::kmain::run_on_cpu(id, secondary_work), "cpu{id} not online");
    }
    let want: u64 = (1..n).map(|i| 1u64 << i).sum();
    let mut spins = 0u64;
    while WORK_DONE.load(Ordering::Acquire) & 0xffff_ffff != want && spins < 100_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
    let got = WORK_DONE.load(Ordering::Acquire);
    ensure!(got >> 32 == 0, "secondaries reported a broken MMU state: {got:#x}");
    ensure!(got == want, "work done mask {got:#x}, expected {want:#x}");
    Ok(())
}

kernel_test!(esr_decode_of_a_real_abort);
fn esr_decode_of_a_real_abort() -> Result<(), String> {
    // A read of an unmapped address through a probe: the ESR the CPU gave us
    // must decode as an EL1 read data abort with a translation fault.
    let (esr, _) = match probe_read_u8(0xffff_6800_0000_1000) {
        Ok(_) => return Err("no fault".into()),
        Err(x) => x,
    };
    let e = Esr(esr);
    ensure!(e.ec() == ExceptionClass::DataAbortSameEl, "{e}");
    ensure!(matches!(e.fault_status(), Some(FaultStatus::Translation(_))), "{e}");
    ensure!(!e.wnr() && !e.s1ptw() && !e.fnv(), "{e}");
    Ok(())
}
