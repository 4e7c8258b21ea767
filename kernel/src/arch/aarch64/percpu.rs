//! Per-CPU data, found through TPIDR_EL1.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::boot::MAX_CPUS;

pub struct PerCpu {
    pub id: usize,
    pub mpidr: AtomicU64,
    pub online: AtomicBool,
    fixup_esr: AtomicU64,
    fixup_far: AtomicU64,
    exec_probe: AtomicBool,
    /// The `UserRun` this CPU is running at EL0 (0: none), for
    /// `user::return_to_kernel`.
    pub current_run: AtomicU64,
}

impl PerCpu {
    const fn new(id: usize) -> Self {
        Self {
            id,
            mpidr: AtomicU64::new(0),
            online: AtomicBool::new(false),
            fixup_esr: AtomicU64::new(0),
            fixup_far: AtomicU64::new(0),
            exec_probe: AtomicBool::new(false),
            current_run: AtomicU64::new(0),
        }
    }
}

static CPUS: [PerCpu; MAX_CPUS] = {
    let mut a = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        a[i] = PerCpu::new(i);
        i += 1;
    }
    a
};

pub static ONLINE: AtomicUsize = AtomicUsize::new(0);

/// Makes `id` the current CPU's identity; called once per CPU at boot.
pub fn init_this_cpu(id: usize) {
    let pc = &CPUS[id];
    pc.mpidr.store(aarch64_cpu::registers::MPIDR_EL1.get(), Ordering::Relaxed);
    super::cpu::set_tpidr_el1(pc as *const PerCpu as u64);
    pc.online.store(true, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

pub fn this_cpu() -> &'static PerCpu {
    let p = super::cpu::tpidr_el1();
    if p == 0 {
        return &CPUS[0];
    }
    // SAFETY: TPIDR_EL1 only ever holds a pointer into CPUS (set above).
    unsafe { &*(p as *const PerCpu) }
}

pub fn cpu(id: usize) -> &'static PerCpu {
    &CPUS[id]
}

use aarch64_cpu::registers::Readable;

pub fn clear_fixup_fault() {
    let c = this_cpu();
    c.fixup_esr.store(0, Ordering::Relaxed);
    c.fixup_far.store(0, Ordering::Relaxed);
}
pub fn record_fixup_fault(esr: u64, far: u64) {
    let c = this_cpu();
    c.fixup_esr.store(esr, Ordering::Relaxed);
    c.fixup_far.store(far, Ordering::Relaxed);
}
pub fn last_fixup_fault() -> (u64, u64) {
    let c = this_cpu();
    (c.fixup_esr.load(Ordering::Relaxed), c.fixup_far.load(Ordering::Relaxed))
}
pub fn arm_exec_probe() {
    this_cpu().exec_probe.store(true, Ordering::Relaxed);
}
pub fn take_exec_probe() -> bool {
    this_cpu().exec_probe.swap(false, Ordering::Relaxed)
}
