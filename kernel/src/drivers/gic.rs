//! The interrupt controller: a GICv2 or GICv3, whichever the devicetree
//! names, through the `arm-gic` crate.
//!
//! [`init`] (boot CPU, once) maps the distributor and the CPU interface
//! (GICv2) or the redistributors (GICv3) through `ioremap` and configures the
//! distributor; [`init_this_cpu`] (every CPU, on itself) brings up its own CPU
//! interface / redistributor. After that the hot path is [`ack`] / [`eoi`],
//! called only from the IRQ handler, and [`send_sgi`].
//!
//! Everything is Non-secure Group 1 (GICv3) or Group 0 without security
//! extensions (GICv2 on QEMU `virt`, which has `secure=off`), signalled as
//! IRQ, never FIQ. Every interrupt has the same priority and the priority
//! mask lets all of them through: there is no preemption among interrupts,
//! handlers run with PSTATE.I set.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use arm_gic::gicv2::GicV2;
use arm_gic::gicv3::{GicCpuInterface, GicV3, SgiTarget, SgiTargetGroup};
use arm_gic::{IntId, InterruptGroup, Trigger};
use safe_mmio::UniqueMmioPointer;
use spin::Mutex;

use crate::arch::aarch64::boot::MAX_CPUS;
use crate::arch::{cpu, percpu};
use crate::board::dt::{Gic as GicNode, GicVersion};
use crate::mm::addr::PhysRange;
use crate::mm::kernel_pgtable;

enum Driver {
    V2(GicV2<'static>),
    V3(GicV3<'static>),
}

/// The driver. Everything but the GICv3 CPU interface (system registers)
/// goes through it; it is only ever locked with IRQs masked, so the IRQ
/// handler (GICv2 acknowledge) can take it too.
static GIC: Mutex<Option<Driver>> = Mutex::new(None);
/// 0 = no GIC, 2 or 3: the version in use (read lock-free on the hot path).
static VERSION: AtomicU8 = AtomicU8::new(0);
/// GICv2: each CPU's CPU-interface mask (GICD_ITARGETSR of its own SGIs).
static V2_TARGET: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
/// GICv3: each CPU's redistributor index (usize::MAX until it is up).
static V3_REDIST: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(usize::MAX) }; MAX_CPUS];

/// Size of one GICv3 redistributor (RD_base + SGI_base frames).
const GICR_STRIDE: u64 = 0x20000;

fn with_gic<R>(f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    let _irq = cpu::local_irq_save();
    GIC.lock().as_mut().map(f)
}

/// The GIC version in use, if one is up.
pub fn version() -> Option<GicVersion> {
    match VERSION.load(Ordering::Acquire) {
        2 => Some(GicVersion::V2),
        3 => Some(GicVersion::V3),
        _ => None,
    }
}

fn map(r: PhysRange) -> Result<u64, &'static str> {
    kernel_pgtable::ioremap(r).map(|v| v.as_u64()).map_err(|_| "cannot map the GIC registers")
}

/// Maps and configures the distributor (boot CPU, once, IRQs masked).
/// `ncpus` is how many CPUs the devicetree lists: GICv3 maps that many
/// redistributors.
pub fn init(node: &GicNode, ncpus: usize) -> Result<(), &'static str> {
    let gicd = node.distributor().ok_or("GIC node has no distributor registers")?;
    let second = node.cpu_or_redistributors().ok_or("GIC node has no CPU interface / redistributor registers")?;
    let drv = match node.version {
        GicVersion::V2 => {
            let d = map(gicd)?;
            let c = map(second)?;
            GICD_VA.store(d, Ordering::Release);
            // SAFETY: both are Device mappings of this GIC's distributor and
            // CPU interface, used only through this driver.
            let mut g = unsafe { GicV2::new(d as *mut _, c as *mut _) };
            g.setup();
            Driver::V2(g)
        }
        GicVersion::V3 => {
            let n = (ncpus.min(MAX_CPUS) as u64).min(second.size() / GICR_STRIDE).max(1);
            let d = map(gicd)?;
            let r = map(PhysRange::new(second.start.as_u64(), second.start.as_u64() + n * GICR_STRIDE))?;
            // SAFETY: as above, for the distributor and `n` redistributors.
            let mut g = unsafe {
                GicV3::new(
                    UniqueMmioPointer::new(NonNull::new(d as *mut _).unwrap()),
                    NonNull::new(r as *mut _).unwrap(),
                    n as usize,
                )
            }
            .map_err(|_| "unsupported GICv3 redistributor layout")?;
            let me = redist_index(&mut g, n as usize).ok_or("no redistributor for the boot CPU")?;
            // Distributor and every redistributor to defaults (all Group 1 NS,
            // SGIs/PPIs disabled), and the boot CPU's interface.
            g.setup(me);
            Driver::V3(g)
        }
    };
    *GIC.lock() = Some(drv);
    VERSION.store(if node.version == GicVersion::V2 { 2 } else { 3 }, Ordering::Release);
    Ok(())
}

fn redist_index(g: &mut GicV3<'static>, n: usize) -> Option<usize> {
    let me = crate::arch::aarch64::sysreg::mpidr_affinity();
    (0..n).find(|&i| g.gicr_typer(i).is_ok_and(|t| t.core_mpidr() == me))
}

/// Brings up this CPU's side of the GIC (its CPU interface, or its
/// redistributor and the ICC system registers), and enables its SGIs and the
/// PPIs in `ppis` (`(intid, level)`). Runs on the CPU itself, IRQs masked.
pub fn init_this_cpu(ppis: &[(u32, bool)]) -> Result<(), &'static str> {
    let id = percpu::this_cpu().id;
    with_gic(|d| match d {
        Driver::V2(g) => {
            // The distributor part is idempotent; the CPU interface and the
            // first 32 interrupts' registers are banked per CPU.
            g.setup();
            for s in 0..16 {
                g.enable_interrupt(IntId::sgi(s), true).map_err(|_| "cannot enable an SGI")?;
            }
            for &(intid, level) in ppis {
                let i = IntId::ppi(intid - 16);
                g.set_trigger(i, if level { Trigger::Level } else { Trigger::Edge });
                g.enable_interrupt(i, true).map_err(|_| "cannot enable a PPI")?;
            }
            // GICD_ITARGETSR0..7 read back this CPU's own interface mask;
            // they are RAZ on a GIC with a single CPU interface.
            let mask = match v2_own_mask(g) {
                0 if g.typer().cpu_count() == 1 => 1,
                0 => return Err("GICD_ITARGETSR reads 0: cannot address this CPU"),
                m => m,
            };
            V2_TARGET[id].store(mask, Ordering::Release);
            Ok(())
        }
        Driver::V3(g) => {
            let n = MAX_CPUS;
            let rd = redist_index(g, n).ok_or("no redistributor for this CPU")?;
            g.init_cpu(rd);
            crate::arch::aarch64::cpu::isb();
            GicCpuInterface::set_priority_mask(0xff);
            GicCpuInterface::enable_group1(true);
            for s in 0..16 {
                g.enable_interrupt(IntId::sgi(s), Some(rd), true).map_err(|_| "cannot enable an SGI")?;
            }
            for &(intid, level) in ppis {
                let i = IntId::ppi(intid - 16);
                g.set_trigger(i, Some(rd), if level { Trigger::Level } else { Trigger::Edge })
                    .map_err(|_| "cannot set a PPI trigger")?;
                g.enable_interrupt(i, Some(rd), true).map_err(|_| "cannot enable a PPI")?;
            }
            V3_REDIST[id].store(rd, Ordering::Release);
            Ok(())
        }
    })
    .ok_or("no GIC")?
}

/// This CPU's GICv2 CPU-interface mask: GICD_ITARGETSR0..7 (the SGIs'
/// targets, banked per CPU) read back the reading CPU's own bit, as Linux's
/// `gic_get_cpumask` relies on. arm-gic has no accessor for these registers
/// (a plain array in its `Gicd`), so this one read goes through the mapping.
fn v2_own_mask(_g: &mut GicV2<'static>) -> u8 {
    let Some(itargetsr) = v2_itargetsr() else { return 0 };
    // SAFETY: the distributor is mapped there (Device memory; the caller
    // holds the driver lock); reading GICD_ITARGETSR0 has no side effects.
    let v = unsafe { core::ptr::read_volatile(itargetsr as *const u32) };
    (v & 0xff) as u8
}

/// The GICv2 distributor's VA (for [`v2_itargetsr`]).
static GICD_VA: AtomicU64 = AtomicU64::new(0);

/// The VA of GICD_ITARGETSR (one target byte per INTID), which arm-gic has
/// no accessor for; None before the distributor is mapped.
fn v2_itargetsr() -> Option<u64> {
    let base = GICD_VA.load(Ordering::Acquire);
    (base != 0).then(|| base + core::mem::offset_of!(arm_gic::gicv2::registers::Gicd, itargetsr) as u64)
}

/// An acknowledged interrupt.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    /// The interrupt ID (0-15 SGI, 16-31 PPI, 32+ SPI).
    pub intid: u32,
    /// What was read from the IAR, handed back unchanged to [`eoi`] (a
    /// GICv2 SGI carries its source CPU in bits 12:10).
    iar: IntId,
}

/// Acknowledges the highest-priority pending interrupt, if any. Only from
/// the IRQ handler (PSTATE.I set).
pub fn ack() -> Option<Acked> {
    let iar = match VERSION.load(Ordering::Relaxed) {
        3 => GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1)?,
        2 => match GIC.lock().as_mut() {
            // Group 0 is what GICC_IAR acknowledges without security extensions.
            Some(Driver::V2(g)) => g.get_and_acknowledge_interrupt(InterruptGroup::Group0)?,
            _ => return None,
        },
        _ => return None,
    };
    Some(Acked { intid: u32::from(iar) & 0x3ff, iar })
}

/// Ends (drops the priority of and deactivates) an interrupt [`ack`] returned.
pub fn eoi(a: Acked) {
    match VERSION.load(Ordering::Relaxed) {
        3 => GicCpuInterface::end_interrupt(a.iar, InterruptGroup::Group1),
        2 => {
            if let Some(Driver::V2(g)) = GIC.lock().as_mut() {
                g.end_interrupt(a.iar, InterruptGroup::Group0);
            }
        }
        _ => {}
    }
}

/// Sends SGI `sgi` (0..15) to CPU `target`. Earlier stores are visible to
/// the target before it takes the interrupt.
pub fn send_sgi(target: usize, sgi: u32) -> Result<(), &'static str> {
    if sgi >= 16 || target >= MAX_CPUS || !percpu::cpu(target).online.load(Ordering::Acquire) {
        return Err("no such SGI or CPU");
    }
    cpu::dsb_ishst();
    match VERSION.load(Ordering::Acquire) {
        3 => {
            if V3_REDIST[target].load(Ordering::Acquire) == usize::MAX {
                return Err("that CPU's GIC interface is not up");
            }
            let m = percpu::cpu(target).mpidr.load(Ordering::Relaxed);
            let aff0 = (m & 0xff) as u16;
            if aff0 >= 16 {
                return Err("Aff0 >= 16 needs range selectors");
            }
            let t = SgiTarget::List {
                affinity3: (m >> 32) as u8,
                affinity2: (m >> 16) as u8,
                affinity1: (m >> 8) as u8,
                target_list: 1 << aff0,
            };
            GicCpuInterface::send_sgi(IntId::sgi(sgi), t, SgiTargetGroup::CurrentGroup1).map_err(|_| "bad SGI")
        }
        2 => {
            let mask = V2_TARGET[target].load(Ordering::Acquire);
            if mask == 0 {
                return Err("that CPU's GIC interface is not up");
            }
            with_gic(|d| {
                if let Driver::V2(g) = d {
                    g.send_sgi(
                        IntId::sgi(sgi),
                        arm_gic::gicv2::SgiTarget::List {
                            target_list_filter: arm_gic::gicv2::SgiTargetListFilter::CPUTargetList,
                            target_list: mask as u16,
                        },
                    );
                }
            });
            Ok(())
        }
        _ => Err("no GIC"),
    }
}

/// Enables SPI `intid` (32..) with the given trigger and routes it to CPU
/// `target`, whose GIC interface must be up.
pub fn enable_spi(intid: u32, level: bool, target: usize) -> Result<(), &'static str> {
    if !(32..1020).contains(&intid) || target >= MAX_CPUS {
        return Err("not an SPI, or no such CPU");
    }
    let i = IntId::spi(intid - 32);
    let trigger = if level { Trigger::Level } else { Trigger::Edge };
    match VERSION.load(Ordering::Acquire) {
        2 => {
            let mask = V2_TARGET[target].load(Ordering::Acquire);
            let itargetsr = v2_itargetsr().filter(|_| mask != 0).ok_or("that CPU's GIC interface is not up")?;
            with_gic(|d| {
                let Driver::V2(g) = d else { return Err("no GICv2") };
                g.set_trigger(i, trigger);
                // SAFETY: the distributor is mapped; byte `intid` of
                // GICD_ITARGETSR is this SPI's target mask (byte-accessible
                // by the GICv2 architecture); the driver lock is held.
                unsafe { core::ptr::write_volatile((itargetsr + intid as u64) as *mut u8, mask) };
                g.enable_interrupt(i, true).map_err(|_| "cannot enable the SPI")
            })
            .ok_or("no GIC")?
        }
        3 => {
            let mpidr = percpu::cpu(target).mpidr.load(Ordering::Relaxed) & 0xff_00ff_ffff;
            with_gic(|d| {
                let Driver::V3(g) = d else { return Err("no GICv3") };
                g.set_trigger(i, None, trigger).map_err(|_| "cannot set the SPI's trigger")?;
                g.distributor().set_routing(i, Some(mpidr)).map_err(|_| "cannot route the SPI")?;
                g.enable_interrupt(i, None, true).map_err(|_| "cannot enable the SPI")
            })
            .ok_or("no GIC")?
        }
        _ => Err("no GIC"),
    }
}
