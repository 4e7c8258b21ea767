//! Interrupts: the GIC, the per-CPU timer tick and inter-processor
//! interrupts (SGIs), on top of `drivers::gic` and `drivers::timer`.
//!
//! **Where IRQs are taken.** The kernel runs with PSTATE.I set (IRQs masked)
//! everywhere, as it always has: locks, page-table edits, `AT` and the
//! fault paths never see an interrupt. IRQs are taken only
//! - at EL0: processes run with SPSR.I clear, so an interrupt during an
//!   agent command enters the EL0 IRQ vector and returns to EL0;
//! - in explicit windows at EL1 ([`cpu::irq_window`]): the idle loops
//!   ([`idle`]: secondaries waiting for work, the console waiting for a key)
//!   and code that waits for interrupts on purpose (tests, [`wait_until`]).
//!
//! The handler ([`handle`]) takes no lock except, on a GICv2, the GIC
//! driver's, and for the console UART's receive interrupt the console's;
//! every other user holds those with IRQs masked. It counts, re-arms the
//! tick, drains the UART, ends the interrupt and then calls the hooks.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::arch::aarch64::boot::MAX_CPUS;
use crate::arch::{cpu, percpu};
use crate::board::dt::{BoardInfo, TimerIrq};
use crate::drivers::{bcm2835_armctrl, bcm2836_local, gic, timer, uart};

/// SGI numbers in use.
pub mod sgi {
    /// Wakes an idle CPU (`kmain::run_on_cpu`); no handler.
    pub const WAKE: u32 = 0;
    /// Does nothing but get counted: for tests.
    pub const PING: u32 = 1;
    /// Reserved for cross-CPU calls (TLB shootdown tests).
    pub const CALL: u32 = 2;
}

/// Called on every tick, on the CPU that took it, after the interrupt has
/// ended and with IRQs still masked. `from_el0`: the tick interrupted EL0.
/// The hook for preemptive scheduling; none is set by default.
pub type TickHook = fn(cpu: usize, from_el0: bool);
/// Called when an SGI arrives, on the receiving CPU, after the EOI.
pub type SgiHandler = fn(cpu: usize);

struct Stats {
    ticks: AtomicU64,
    from_el0: AtomicU64,
    from_el1: AtomicU64,
    sgis: [AtomicU64; 16],
    unexpected: AtomicU64,
}

static STATS: [Stats; MAX_CPUS] = [const {
    Stats {
        ticks: AtomicU64::new(0),
        from_el0: AtomicU64::new(0),
        from_el1: AtomicU64::new(0),
        sgis: [const { AtomicU64::new(0) }; 16],
        unexpected: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// The tick's INTID (the EL1 virtual timer's PPI); 0 before `init`.
static TIMER_INTID: AtomicU32 = AtomicU32::new(0);
/// Each CPU: its GIC side and tick are up.
static READY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static TICK_HOOK: AtomicUsize = AtomicUsize::new(0);
static SGI_HANDLERS: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

/// The console UART's receive interrupt: its GIC INTID, or on the BCM2835
/// armctrl `ARMCTRL_BASE + Source::number()`; 0 when the UART is polled.
static UART_INTID: AtomicU32 = AtomicU32::new(0);
/// Numbers above every GIC INTID the handler sees (0..1019) stand for armctrl
/// sources.
const ARMCTRL_BASE: u32 = 2048;

/// Most interrupts handled per exception entry (then the handler returns and
/// anything still pending is taken again straight away).
const MAX_PER_ENTRY: usize = 16;

/// Boot CPU, once, before the secondaries start: the GIC the devicetree
/// names, then this CPU's interface and tick. Without a GIC the kernel runs
/// without interrupts, as before.
pub fn init(board: &BoardInfo) -> Result<(), &'static str> {
    if let Some(node) = board.gic.as_ref() {
        let intid = board.timer_intid(TimerIrq::Virt).unwrap_or(27);
        gic::init(node, board.cpus.len())?;
        TIMER_INTID.store(intid, Ordering::Release);
        return init_this_cpu();
    }
    // The Raspberry Pi 3's ARM-local controller: the timer has no INTID
    // there; 27 (the virtual timer's PPI on a GIC) stands for it.
    if let Some(r) = board.local_intc.as_ref().and_then(|d| d.regs.first().copied()) {
        bcm2836_local::init(r)?;
        LOCAL_INTC.store(true, Ordering::Release);
        TIMER_INTID.store(27, Ordering::Release);
        return init_this_cpu();
    }
    Err("the devicetree names no interrupt controller (GIC or BCM2836 ARM-local): running without interrupts")
}

/// The console UART's receive interrupt, delivered to the boot CPU (whose
/// idle loop is the console's). Boot CPU, after [`init`] and the UART. On a
/// GIC the UART node's first interrupt is an SPI; without one (Pi 3), the
/// devicetree's BCM2835 armctrl takes `<bank bit>` specifiers, and the
/// ARM-local controller routes its output here. Errors leave it polled.
pub fn init_console_irq(board: &BoardInfo) -> Result<(), &'static str> {
    let dev = board.uart.as_ref().ok_or("no console UART")?;
    let me = percpu::this_cpu().id;
    if !ready(me) {
        return Err("this CPU takes no interrupts");
    }
    if board.gic.is_some() {
        let intid = dev.gic_intid(0).filter(|&i| i >= 32).ok_or("the UART's node has no SPI")?;
        uart::enable_rx_interrupt()?;
        gic::enable_spi(intid, dev.gic_level(0), me)?;
        UART_INTID.store(intid, Ordering::Release);
        uart::set_rx_by_irq();
        return Ok(());
    }
    if LOCAL_INTC.load(Ordering::Acquire) {
        let ctl = board
            .armctrl
            .as_ref()
            .and_then(|d| d.regs.first().copied())
            .ok_or("no BCM2835 interrupt controller in the devicetree")?;
        let src = match dev.interrupts[..] {
            [bank, bit, ..] => bcm2835_armctrl::Source::from_cells(bank, bit).ok_or("bad armctrl specifier")?,
            _ => return Err("the UART's node has no interrupt"),
        };
        uart::enable_rx_interrupt()?;
        bcm2835_armctrl::init(ctl)?;
        UART_INTID.store(ARMCTRL_BASE + src.number(), Ordering::Release);
        bcm2835_armctrl::enable(src);
        bcm2836_local::route_gpu_to(me);
        uart::set_rx_by_irq();
        return Ok(());
    }
    Err("no interrupt controller")
}

/// The console UART's receive interrupt, described, or None if it is polled.
pub fn console_irq() -> Option<alloc::string::String> {
    match UART_INTID.load(Ordering::Acquire) {
        0 => None,
        n if n >= ARMCTRL_BASE => {
            let s = bcm2835_armctrl::Source::from_number(n - ARMCTRL_BASE)?;
            Some(alloc::format!("BCM2835 armctrl <{} {}> via the ARM-local controller", s.bank, s.bit))
        }
        n => Some(alloc::format!("GIC INTID {n}")),
    }
}

/// The interrupt controller's name, for the boot log.
pub fn controller_name() -> &'static str {
    if LOCAL_INTC.load(Ordering::Acquire) {
        "BCM2836 ARM-local controller (mailbox IPIs)"
    } else if gic::version() == Some(crate::board::dt::GicVersion::V3) {
        "GICv3"
    } else {
        "GICv2"
    }
}

/// The interrupt controller is the BCM2836 ARM-local one (no GIC).
static LOCAL_INTC: AtomicBool = AtomicBool::new(false);

/// The controller in use, as one interface for the handler.
enum Acked {
    Gic(gic::Acked),
    Local(u32),
}

impl Acked {
    fn intid(&self) -> u32 {
        match self {
            Acked::Gic(a) => a.intid,
            Acked::Local(i) => *i,
        }
    }
}

fn ack() -> Option<Acked> {
    if LOCAL_INTC.load(Ordering::Relaxed) {
        return bcm2836_local::ack().map(|p| match p {
            bcm2836_local::Pending::Sgi(n) => Acked::Local(n),
            bcm2836_local::Pending::Timer => Acked::Local(TIMER_INTID.load(Ordering::Relaxed)),
            // Level-sensitive and nothing to acknowledge: the handler serves
            // the device, which drops the line. Only enabled sources show.
            bcm2836_local::Pending::Gpu => {
                Acked::Local(bcm2835_armctrl::pending().map_or(u32::MAX, |s| ARMCTRL_BASE + s.number()))
            }
        });
    }
    gic::ack().map(Acked::Gic)
}

fn eoi(a: Acked) {
    // The ARM-local controller has no EOI: mailboxes were cleared at ack,
    // and the timer is level (re-armed before this).
    if let Acked::Gic(a) = a {
        gic::eoi(a);
    }
}

/// Every CPU, on itself, IRQs masked: its GIC interface, SGIs, the timer
/// PPI and the tick.
pub fn init_this_cpu() -> Result<(), &'static str> {
    let intid = TIMER_INTID.load(Ordering::Acquire);
    if intid == 0 {
        return Err("no interrupt controller");
    }
    if LOCAL_INTC.load(Ordering::Acquire) {
        bcm2836_local::init_this_cpu();
    } else {
        let level = crate::kmain::BOOT
            .get()
            .and_then(|b| b.board.timer.as_ref().map(|t| t.gic_level(TimerIrq::Virt as usize)))
            .unwrap_or(true);
        gic::init_this_cpu(&[(intid, level)])?;
    }
    timer::start_this_cpu();
    READY[percpu::this_cpu().id].store(true, Ordering::Release);
    Ok(())
}

/// Why interrupt-driven tests cannot apply on this machine, if they cannot:
/// the devicetree names no GIC (the Raspberry Pi 3's BCM2836 ARM-local
/// controller is not driven), so the kernel runs without interrupts. None
/// when there is a GIC: then a CPU without interrupts is a failure.
pub fn no_interrupts_reason() -> Option<&'static str> {
    let b = crate::kmain::BOOT.get()?;
    (b.board.gic.is_none() && b.board.local_intc.is_none())
        .then_some("the devicetree names no interrupt controller, so the kernel runs without interrupts")
}

/// Whether CPU `cpu` takes interrupts (its GIC side and tick are up).
pub fn ready(cpu: usize) -> bool {
    cpu < MAX_CPUS && READY[cpu].load(Ordering::Acquire)
}

/// The IRQ exception handler (from the vectors, IRQs masked).
pub fn handle(from_el0: bool) {
    let me = percpu::this_cpu().id;
    let st = &STATS[me];
    if from_el0 {
        st.from_el0.fetch_add(1, Ordering::Relaxed);
    } else {
        st.from_el1.fetch_add(1, Ordering::Relaxed);
    }
    let timer_id = TIMER_INTID.load(Ordering::Relaxed);
    let uart_id = UART_INTID.load(Ordering::Relaxed);
    for _ in 0..MAX_PER_ENTRY {
        let Some(a) = ack() else { break };
        match a.intid() {
            s @ 0..=15 => {
                st.sgis[s as usize].fetch_add(1, Ordering::Release);
                eoi(a);
                let h = SGI_HANDLERS[s as usize].load(Ordering::Acquire);
                if h != 0 {
                    // SAFETY: only set_sgi_handler stores here, and only SgiHandler pointers.
                    let f: SgiHandler = unsafe { core::mem::transmute(h) };
                    f(me);
                }
            }
            t if t == timer_id => {
                // Re-arm first: the PPI is level-sensitive and would fire again after the EOI.
                timer::rearm();
                st.ticks.fetch_add(1, Ordering::Release);
                eoi(a);
                let h = TICK_HOOK.load(Ordering::Acquire);
                if h != 0 {
                    // SAFETY: only set_tick_hook stores here, and only TickHook pointers.
                    let f: TickHook = unsafe { core::mem::transmute(h) };
                    f(me, from_el0);
                }
            }
            u if u == uart_id && u != 0 => {
                // Drained before the EOI: the line is level-sensitive.
                uart::rx_irq();
                eoi(a);
            }
            _ => {
                st.unexpected.fetch_add(1, Ordering::Relaxed);
                eoi(a);
            }
        }
    }
}

/// Sets (or clears) the tick hook for all CPUs.
pub fn set_tick_hook(h: Option<TickHook>) {
    TICK_HOOK.store(h.map_or(0, |f| f as usize), Ordering::Release);
}

/// Sets (or clears) what runs when SGI `sgi` arrives.
pub fn set_sgi_handler(sgi: u32, h: Option<SgiHandler>) {
    SGI_HANDLERS[sgi as usize & 15].store(h.map_or(0, |f| f as usize), Ordering::Release);
}

/// Sends SGI `sgi` to CPU `target` (which may be this CPU). Stores made
/// before the call are visible to the target's handler.
pub fn send_ipi(target: usize, sgi: u32) -> Result<(), &'static str> {
    if !ready(target) {
        return Err("that CPU does not take interrupts");
    }
    if LOCAL_INTC.load(Ordering::Acquire) {
        return bcm2836_local::send_sgi(target, sgi);
    }
    gic::send_sgi(target, sgi)
}

/// Timer interrupts CPU `cpu` has taken.
pub fn ticks(cpu: usize) -> u64 {
    STATS[cpu].ticks.load(Ordering::Acquire)
}
/// SGI `sgi` received by CPU `cpu`.
pub fn sgi_count(cpu: usize, sgi: u32) -> u64 {
    STATS[cpu].sgis[sgi as usize & 15].load(Ordering::Acquire)
}
/// IRQ exceptions CPU `cpu` took from EL0 and from EL1.
pub fn entries(cpu: usize) -> (u64, u64) {
    (STATS[cpu].from_el0.load(Ordering::Relaxed), STATS[cpu].from_el1.load(Ordering::Relaxed))
}
/// Interrupts with an INTID nobody enabled (should stay 0).
pub fn unexpected(cpu: usize) -> u64 {
    STATS[cpu].unexpected.load(Ordering::Relaxed)
}

/// Waits for something to happen, IRQs masked on entry and exit: `wfi`
/// (which wakes for a pending interrupt even while masked) and then an IRQ
/// window, on a CPU that takes interrupts; `wfe` otherwise. An SGI or tick
/// that arrives between the caller's check and the `wfi` is not lost.
pub fn idle() {
    if ready(percpu::this_cpu().id) {
        cpu::wfi();
        cpu::irq_window();
    } else {
        cpu::wfe();
    }
}

/// Spins with IRQ windows until `cond()` holds or `ms` milliseconds of the
/// virtual counter have passed; returns whether `cond()` held.
pub fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = timer::now() + timer::ms_to_counts(ms);
    loop {
        if cond() {
            return true;
        }
        if timer::now() > end {
            return cond();
        }
        cpu::irq_window();
        core::hint::spin_loop();
    }
}
