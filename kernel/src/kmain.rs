//! The boot CPU's path from the assembly entry to the console, and the
//! secondaries' path to their idle loop.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;

use crate::arch::aarch64::boot::MAX_CPUS;
use crate::arch::aarch64::granule::{PAGE_SIZE, align_down, align_up};
use crate::arch::aarch64::memory::FIXMAP_BASE;
use crate::arch::{cpu, percpu, psci, semihosting};
use crate::board::dt::{self, BoardInfo};
use crate::mm::addr::{PhysRange, VirtAddr};
use crate::mm::layout::io_virt;
use crate::mm::{frame, heap, kernel_pgtable};
use crate::{println, sym_addr};

pub struct BootInfo {
    pub boot_el: u64,
    pub phys_base: u64,
    pub dtb_pa: u64,
    pub board: BoardInfo,
    pub reserved: Vec<(PhysRange, &'static str)>,
}

pub static BOOT: Once<BootInfo> = Once::new();

pub fn boot() -> &'static BootInfo {
    BOOT.get().expect("boot info not set")
}

/// Ends the run: QEMU exits with `code` when semihosting is enabled,
/// otherwise PSCI SYSTEM_OFF (code 0) or SYSTEM_RESET; never returns.
pub fn exit(code: u32) -> ! {
    semihosting::exit(code);
    if psci::available() {
        let _ = if code == 0 { psci::system_off() } else { psci::system_reset() };
    }
    loop {
        cpu::local_irq_disable();
        cpu::wfe();
    }
}

/// Entered from `primary_switched` with the MMU on (early tables).
///
/// # Safety
/// Called exactly once, by the boot assembly.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kernel_main(dtb_pa: u64, phys_base: u64, boot_el: u64) -> ! {
    crate::arch::aarch64::mmu::program();
    percpu::init_this_cpu(0);
    heap::init_static();

    // The DTB is mapped at FIXMAP_BASE + its page offset by the boot code.
    let dtb_va = FIXMAP_BASE + (dtb_pa & (PAGE_SIZE - 1));
    // SAFETY: the boot code mapped the DTB's full size there.
    let dtb = unsafe {
        let size = u32::from_be(*((dtb_va + 4) as *const u32)) as usize;
        core::slice::from_raw_parts(dtb_va as *const u8, size)
    };
    let board = match dt::parse(dtb) {
        Ok(b) => b,
        Err(_) => exit(102), // no console yet: nothing else we can say
    };
    if board.bootarg("pagelab.exit") == Some("semihosting") {
        semihosting::enable();
    }

    // Physical memory: everything but the image, the DTB, the initrd and
    // the firmware's reservations.
    let kernel_size = sym_addr!(__kernel_end) - sym_addr!(__kernel_start);
    let mut reserved: Vec<(PhysRange, &'static str)> = Vec::new();
    reserved.push((PhysRange::new(phys_base, phys_base + kernel_size), "kernel image"));
    reserved.push((
        PhysRange::new(align_down(dtb_pa, PAGE_SIZE), align_up(dtb_pa + board.dtb_size as u64, PAGE_SIZE)),
        "devicetree",
    ));
    if let Some(r) = board.initrd {
        reserved.push((r, "initrd (script)"));
    }
    for (r, _) in &board.reserved {
        reserved.push((*r, "firmware reserved"));
    }
    // Spin tables: the parked CPUs poll these words (the firmware's
    // devicetree normally reserves them too).
    for c in &board.cpus {
        if let (Some(a), "spin-table") = (c.release_addr, c.enable_method.as_str()) {
            let page = PhysRange::new(align_down(a, PAGE_SIZE), align_up(a + 8, PAGE_SIZE));
            if !reserved.iter().any(|r| r.0.start == page.start && r.0.end == page.end) {
                reserved.push((page, "spin table"));
            }
        }
    }
    // The swap device: `pagelab.swap=SIZE` (default 64M) at the top of the
    // highest RAM bank, kept from the allocator (qemu-run.sh adds SIZE to
    // QEMU's RAM, so --mem stays what the kernel manages). Then the PFN
    // pool: the 4 MiB below it, kept for `mmap pfn=PHYS`
    // (remap_pfn_range-style) mappings.
    if let Some(top) = board.ram.iter().max_by_key(|r| r.end) {
        let mut top_end = align_down(top.end.as_u64(), 2 << 20);
        let swap = match board.bootarg("pagelab.swap") {
            None => Some(crate::mm::swapfile::DEFAULT_SWAP_SIZE),
            Some(a) => crate::util::parse_number(a),
        };
        crate::mm::swapfile::set_requested(swap);
        if let Some(size) = swap.filter(|&s| s > 0).and_then(|s| s.checked_next_multiple_of(2 << 20))
            && size.checked_add(64 << 20).is_some_and(|need| need <= top.size())
            && let Some(extents) = swap_extents(top.start.as_u64(), top_end, size, &reserved)
        {
            for &(s, e) in &extents {
                reserved.push((PhysRange::new(s.as_u64(), e.as_u64()), "swap device (pagelab.swap=)"));
            }
            crate::mm::swapfile::set_pool(&extents);
            top_end = extents.iter().map(|x| x.0.as_u64()).min().unwrap_or(top_end);
        }
        let pool = PhysRange::new(top_end - crate::mm::memory::PFN_POOL_SIZE, top_end);
        if top.size() >= 64 << 20 && pool.start >= top.start && !reserved.iter().any(|r| r.0.overlaps(&pool)) {
            reserved.push((pool, "PFN pool (mmap pfn=)"));
            crate::mm::memory::set_pfn_pool(pool.start, pool.end);
        }
    }
    let cuts: Vec<PhysRange> = reserved.iter().map(|r| r.0).collect();
    frame::init(&board.ram, &cuts);

    let uart = board.uart.as_ref().and_then(|u| u.regs.first().copied());
    // SAFETY: boot CPU, once, nothing else running.
    unsafe { kernel_pgtable::init(phys_base, &board.ram, uart) };
    if let (Some(u), Some(dev)) = (uart, board.uart.as_ref()) {
        if dev.compatible.split(' ').any(|c| c == "brcm,bcm2835-aux-uart") {
            // AUX_ENABLES shares the mini UART's page (AUX + 0x04 and
            // + 0x40), so the kernel tables map it too; it is used only if the
            // devicetree says where it is.
            let page = |a: u64| align_down(a, PAGE_SIZE);
            let enables = board
                .aux
                .as_ref()
                .and_then(|a| a.regs.first())
                .filter(|a| page(a.start.as_u64()) == page(u.start.as_u64()))
                .map(|a| io_virt(a.start + 4).as_u64());
            // The VPU clock the firmware fixes with enable_uart=1; used only
            // if the firmware left the UART off (so it set no baud rate).
            let clock = if board.compatible_any(&["brcm,bcm2711", "brcm,bcm2712"]) { 500_000_000 } else { 250_000_000 };
            // SAFETY: kernel_pgtable mapped the UART's page (AUX_ENABLES included) as Device memory.
            unsafe { crate::drivers::uart::init_mini(io_virt(u.start).as_u64(), enables, clock) };
        } else {
            // SAFETY: kernel_pgtable mapped the UART registers as Device memory there.
            unsafe { crate::drivers::uart::init(io_virt(u.start).as_u64()) };
        }
    }
    crate::drivers::logger::init(board.bootarg("loglevel"));
    if let Some(want) = board.bootarg("pagelab.uart").filter(|_| board.uart_chosen_by != "pagelab.uart") {
        log::warn!(
            "pagelab.uart={want} names no PL011 or mini UART (an alias or a node path); the console is on {} ({})",
            board.uart.as_ref().map_or("nothing", |u| u.path.as_str()),
            board.uart_chosen_by
        );
    }
    psci::init(board.psci);

    // A heap of about 1/64 of RAM (at least 4 MiB), plus the rescue reserve.
    let chunks = ((board.total_ram() / 64) >> 21).clamp(2, 32) as usize;
    heap::grow(chunks);
    heap::refill_reserve();
    crate::mm::page::init();
    crate::mm::memory::zero_pfn_pool();
    crate::mm::swapfile::init();

    crate::arch::aarch64::mm::context::init(
        crate::arch::aarch64::sysreg::cpu_asid_bits(),
        board.bootarg("pagelab.asid-bits").and_then(|v| v.parse().ok()),
        board.cpus.len().clamp(1, MAX_CPUS),
    );
    BOOT.call_once(|| BootInfo { boot_el, phys_base, dtb_pa, board, reserved });
    banner();
    // The GIC and this CPU's tick, before the secondaries bring up theirs.
    // IRQs stay masked at EL1 (see `irq`).
    match crate::irq::init(&boot().board) {
        Ok(()) => log::info!(
            "interrupts: {}, timer PPI {} at {} Hz, {} Hz tick{}",
            crate::irq::controller_name(),
            boot().board.timer_intid(dt::TimerIrq::Virt).unwrap_or(27),
            crate::drivers::timer::frequency(),
            crate::drivers::timer::HZ,
            if cpu::has_pan() { "; PAN on" } else { "" }
        ),
        Err(e) => log::warn!("interrupts: {e}"),
    }
    match crate::irq::init_console_irq(&boot().board) {
        Ok(()) => log::info!("console: receive interrupt: {}", crate::irq::console_irq().unwrap_or_default()),
        Err(e) => log::info!("console: receive polled ({e})"),
    }
    start_secondaries();

    crate::proc::sched::init(boot().board.bootarg("pagelab.sched") == Some("local"));
    // Hardware access-flag updates for user memory.
    if boot().board.bootarg("pagelab.hw-af") == Some("1") {
        if cpu::has_hw_af() {
            // Processes run on every CPU: each one's TCR_EL1.
            crate::mm::desc::set_hw_af(true);
            on_every_cpu(|| cpu::set_hw_af(true));
            log::info!("hardware access flag (TCR_EL1.HA) on");
        } else {
            log::warn!("pagelab.hw-af=1: this CPU has no FEAT_HAFDBS; access flags stay in software");
        }
    }

    // Hardware dirty state for user memory (DBM; writable-clean entries).
    if boot().board.bootarg("pagelab.hw-dbm") == Some("1") {
        if cpu::has_hw_dbm() {
            crate::mm::desc::set_hw_dbm(true);
            on_every_cpu(|| cpu::set_hw_dbm(true));
            log::info!("hardware dirty state (TCR_EL1.HD, DBM) on");
        } else {
            log::warn!(
                "pagelab.hw-dbm=1: this CPU cannot manage dirty state (FEAT_HAFDBS with DBM); dirty bits stay in software"
            );
        }
    }

    // Allocation-failure injection: configured now, armed only around
    // console commands (see mm::fail_alloc).
    if let Some(arg) = boot().board.bootarg("pagelab.fail-alloc") {
        match crate::mm::fail_alloc::parse_arg(arg) {
            Ok((ppm, seed)) => {
                crate::mm::fail_alloc::configure(ppm, seed);
                log::info!("pagelab.fail-alloc: {ppm} ppm of frame, table and heap allocations fail (seed {seed})");
            }
            Err(e) => log::warn!("pagelab.fail-alloc={arg} ignored: {e} (expected PPM[,SEED])"),
        }
    }

    if let Some(what) = boot().board.bootarg("pagelab.crash") {
        crash(what);
    }

    let mode = boot().board.bootarg("pagelab.mode").unwrap_or("console");
    match mode {
        "test" => {
            let failed = crate::test::run_all();
            exit(if failed == 0 { 0 } else { 1 })
        }
        "bench" => {
            let problems = crate::bench::run_all();
            println!("bench done: {problems} problem(s)");
            exit(if problems == 0 { 0 } else { 1 })
        }
        "torture" => {
            let divergences = crate::torture::run();
            exit(if divergences == 0 { 0 } else { 1 })
        }
        "script" => {
            let failed = crate::console::run_script();
            exit(if failed == 0 { 0 } else { 1 })
        }
        _ => crate::console::interactive(),
    }
}

fn banner() {
    let b = boot();
    let midr = crate::arch::aarch64::sysreg::midr_el1();
    println!("pagelab {} on {} ({})", env!("CARGO_PKG_VERSION"), b.board.model, b.board.compatible);
    println!(
        "  entered at EL{}, running at EL1; MIDR {midr:#x}; {} CPU(s) in the devicetree; granule {}",
        b.boot_el,
        b.board.cpus.len(),
        crate::arch::aarch64::granule::GRANULE.name()
    );
    println!(
        "  RAM {}; kernel image at PA {:#x} (VA {:#x}); DTB at {:#x}",
        crate::util::Bytes(b.board.total_ram()),
        b.phys_base,
        sym_addr!(__kernel_start),
        b.dtb_pa
    );
    if let Ok((maj, min)) = psci::version() {
        println!("  PSCI {maj}.{min} via {:?}", b.board.psci.unwrap());
    }
}

/// Starts every CPU the devicetree lists: through PSCI CPU_ON when there is
/// PSCI, else through the CPU's spin table (`enable-method = "spin-table"`,
/// the Raspberry Pi's firmware and QEMU's raspi boot stub). One CPU at a
/// time: each is waited for (bounded) before the next is started.
fn start_secondaries() {
    let b = boot();
    let psci = psci::available();
    let me = crate::arch::aarch64::sysreg::mpidr_affinity();
    let psci_entry =
        kernel_pgtable::kimage_to_phys(VirtAddr::new(crate::arch::aarch64::boot::secondary_entry as *const () as u64))
            .as_u64();
    let spin_entry =
        kernel_pgtable::kimage_to_phys(VirtAddr::new(crate::arch::aarch64::boot::spin_table_entry as *const () as u64))
            .as_u64();
    let mut next = 1usize;
    for c in &b.board.cpus {
        if c.mpidr == me {
            continue;
        }
        if next >= MAX_CPUS {
            log::warn!("only {MAX_CPUS} CPUs supported; cpu with MPIDR {:#x} stays off", c.mpidr);
            continue;
        }
        let want = percpu::ONLINE.load(Ordering::Acquire) + 1;
        let started = if psci {
            psci::cpu_on(c.mpidr, psci_entry, next as u64)
                .map_err(|e| log::error!("PSCI CPU_ON for MPIDR {:#x} failed: {e:?}", c.mpidr))
        } else if c.enable_method == "spin-table" {
            spin_table_release(c, next, spin_entry)
        } else {
            log::warn!(
                "cpu with MPIDR {:#x} stays parked: no PSCI, and its enable-method is {:?} (not \"spin-table\")",
                c.mpidr,
                c.enable_method
            );
            Err(())
        };
        if started.is_ok() {
            // Wait (bounded) for it to check in.
            let mut spins = 0u64;
            while percpu::ONLINE.load(Ordering::Acquire) < want && spins < 50_000_000 {
                core::hint::spin_loop();
                spins += 1;
            }
            if percpu::ONLINE.load(Ordering::Acquire) < want {
                log::error!("cpu{next} (MPIDR {:#x}) did not come online", c.mpidr);
            }
        }
        next += 1;
    }
    log::info!(
        "{} CPU(s) online{}",
        percpu::ONLINE.load(Ordering::Acquire),
        if psci {
            ""
        } else if b.board.cpus.len() > 1 {
            " (spin-table)"
        } else {
            ""
        }
    );
}

/// Releases one CPU from its spin table: records its MPIDR for logical CPU
/// `id` (`spin_table_entry` looks itself up there, as a spin table passes no
/// context id), writes `entry` (physical) to its `cpu-release-addr` through
/// the linear map, cleans both to the point of coherency (the spinning CPU
/// reads with its MMU and caches off) and wakes it with `sev`.
fn spin_table_release(c: &dt::CpuNode, id: usize, entry: u64) -> Result<(), ()> {
    let Some(rel) = c.release_addr else {
        log::error!("cpu with MPIDR {:#x}: spin-table without cpu-release-addr; it stays parked", c.mpidr);
        return Err(());
    };
    if rel & 7 != 0 || !boot().board.ram.iter().any(|r| rel >= r.start.as_u64() && rel + 8 <= r.end.as_u64()) {
        log::error!(
            "cpu with MPIDR {:#x}: cpu-release-addr {rel:#x} is not an aligned RAM address; it stays parked",
            c.mpidr
        );
        return Err(());
    }
    // SAFETY: SPIN_TABLE_MPIDR is written only here, by the boot CPU, before
    // CPU `id` is released; CPUs already running never read it again.
    unsafe {
        let slot = core::ptr::addr_of_mut!(crate::arch::aarch64::boot::SPIN_TABLE_MPIDR[id]);
        slot.write_volatile(c.mpidr);
        cpu::dcache_clean_poc(slot as u64, 8);
    }
    let va = crate::mm::layout::phys_to_virt(crate::mm::addr::PhysAddr::new(rel)).as_u64() as *mut u64;
    // SAFETY: `rel` is an aligned RAM address (checked above), so it is in
    // the linear map; the devicetree hands the word to us for this release
    // (and reserves it: /memreserve/), nothing else writes it.
    unsafe { va.write_volatile(entry) };
    cpu::dcache_clean_poc(va as u64, 8); // ends with dsb sy
    cpu::sev();
    Ok(())
}

/// Work a secondary CPU has been asked to run (a test hook until the
/// scheduler arrives): a function pointer, run once, then cleared.
pub static SECONDARY_WORK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Entered from `secondary_switched` with the MMU on.
#[unsafe(no_mangle)]
extern "C" fn secondary_main(id: u64) -> ! {
    let id = id as usize;
    crate::arch::aarch64::mmu::program();
    let (_, empty) = kernel_pgtable::roots();
    // SAFETY: TTBR0 still holds the boot identity map, which nothing uses now.
    unsafe { cpu::set_ttbr0(empty.as_u64()) };
    percpu::init_this_cpu(id);
    if crate::irq::ready(0)
        && let Err(e) = crate::irq::init_this_cpu()
    {
        log::error!("cpu{id}: interrupts: {e}");
    }
    // Work runs with IRQs masked, like everything at EL1; they are taken in
    // the idle window only.
    loop {
        let f = SECONDARY_WORK[id].swap(0, Ordering::AcqRel);
        if f != 0 {
            // SAFETY: only `run_on_cpu` stores here, and only `fn()` pointers.
            let f: fn() = unsafe { core::mem::transmute(f as usize) };
            f();
            WORK_DONE[id].fetch_add(1, Ordering::AcqRel);
            cpu::sev();
        }
        if crate::proc::sched::run_one() {
            continue;
        }
        crate::irq::idle();
    }
}

/// Work items each secondary CPU has finished.
static WORK_DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Runs `f` on this CPU and then on every other online CPU, each in turn,
/// and returns once all of them have run it (per-CPU register settings).
pub fn on_every_cpu(f: fn()) {
    f();
    let me = percpu::this_cpu().id;
    for c in (0..MAX_CPUS).filter(|&c| c != me) {
        let before = WORK_DONE[c].load(Ordering::Acquire);
        if run_on_cpu(c, f) && !crate::irq::wait_until(1000, || WORK_DONE[c].load(Ordering::Acquire) != before) {
            log::error!("cpu{c} did not run the work it was given");
        }
    }
}

/// Asks secondary CPU `id` to run `f` (returns false if it is not online).
pub fn run_on_cpu(id: usize, f: fn()) -> bool {
    if id == 0 || id >= MAX_CPUS || !percpu::cpu(id).online.load(Ordering::Acquire) {
        return false;
    }
    SECONDARY_WORK[id].store(f as *const () as u64, Ordering::Release);
    cpu::sev();
    // An idle CPU that takes interrupts sleeps in `wfi`: wake it.
    let _ = crate::irq::send_ipi(id, crate::irq::sgi::WAKE);
    true
}

/// `pagelab.crash=KIND`: crash on purpose after boot, so tests can check that
/// each kind of fatal error produces a readable report and a failing exit.
fn crash(what: &str) {
    println!("pagelab: crashing on purpose: {what}");
    match what {
        "stack-overflow" => {
            #[inline(never)]
            fn recurse(n: u64) -> u64 {
                let buf = core::hint::black_box([n; 64]);
                if n == u64::MAX { 0 } else { recurse(n + 1).wrapping_add(buf[7]) }
            }
            core::hint::black_box(recurse(0));
        }
        "unmapped-read" => {
            // SAFETY: none; this is meant to take an unhandled translation fault.
            let v = unsafe { core::ptr::read_volatile(0xffff_6800_dead_0000 as *const u64) };
            core::hint::black_box(v);
        }
        "undefined-instruction" => {
            crate::arch::aarch64::cpu::undefined_instruction();
        }
        "panic" => panic!("panic requested with pagelab.crash=panic"),
        other => println!(
            "pagelab: unknown crash kind `{other}` (stack-overflow, unmapped-read, undefined-instruction, panic)"
        ),
    }
}

/// The swap pool: `size` bytes taken downwards from `top_end` (2 MiB
/// aligned) around the `reserved` ranges (QEMU puts the devicetree and
/// initrd 128 MiB into RAM, inside a large pool on a small machine), in at
/// most [`MAX_EXTENTS`](crate::mm::swapfile::MAX_EXTENTS) pieces, highest
/// first. `None` if it does not fit above `floor`.
fn swap_extents(
    floor: u64,
    top_end: u64,
    size: u64,
    reserved: &[(PhysRange, &str)],
) -> Option<alloc::vec::Vec<(crate::mm::addr::PhysAddr, crate::mm::addr::PhysAddr)>> {
    use crate::mm::addr::PhysAddr;
    const ALIGN: u64 = 2 << 20;
    let (mut end, mut need, mut out) = (top_end, size, alloc::vec::Vec::new());
    while need > 0 {
        if out.len() == crate::mm::swapfile::MAX_EXTENTS {
            return None;
        }
        let start = end.checked_sub(need).filter(|&s| s >= floor)?;
        let piece = PhysRange::new(start, end);
        // The highest reserved range in the way: the piece stops above it.
        match reserved.iter().map(|r| r.0).filter(|r| r.overlaps(&piece)).max_by_key(|r| r.end.as_u64()) {
            None => {
                out.push((PhysAddr::new(start), PhysAddr::new(end)));
                need = 0;
            }
            Some(r) => {
                let lo = r.end.as_u64().next_multiple_of(ALIGN);
                if lo < end {
                    out.push((PhysAddr::new(lo), PhysAddr::new(end)));
                    need -= end - lo;
                }
                end = r.start.as_u64() / ALIGN * ALIGN;
            }
        }
    }
    Some(out)
}
