//! ASID allocation with a generation scheme, for every CPU (as Linux
//! arm64's `arch/arm64/mm/context.c`).
//!
//! An mm's ASID is valid only for the generation it was handed out in.
//! When every ASID is in use, the generation advances, the whole TLB is
//! invalidated everywhere (`TLBI VMALLE1IS`) and ASIDs are handed out again
//! as address spaces next run; an mm from an older generation gets a fresh
//! one then. So no translation cached under an old ASID value can ever be
//! used by the address space that receives that value next.
//!
//! **Other CPUs.** A rollover happens while other CPUs may be running (or
//! lazily holding in TTBR0) an mm with an old-generation ASID: they keep
//! using that ASID value until they next switch. So, like Linux's
//! `reserved_asids`, the rollover keeps each CPU's active ASID out of the
//! new generation's free pool and hands it back to the same mm (by its
//! exact old `generation | asid` value) when that mm asks again. Each CPU
//! publishes what its TTBR0 holds in [`ACTIVE`], under the allocator lock,
//! before it writes TTBR0, so a rollover on another CPU always sees it.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use crate::arch::aarch64::boot::MAX_CPUS;
use crate::arch::aarch64::percpu;

/// ASID bits the kernel uses: 16 or 8 from the CPU, or fewer when
/// `pagelab.asid-bits=N` asks (tests use this to force rollovers).
static BITS: AtomicU64 = AtomicU64::new(8);
/// Rollovers so far (for tests and `info`).
pub static ROLLOVERS: AtomicU64 = AtomicU64::new(0);
/// Per CPU: the `generation << 16 | asid` value its TTBR0 holds (0: the
/// empty table, ASID 0). Written under the allocator lock.
static ACTIVE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

struct State {
    generation: u64,
    /// One bit per ASID of the current generation (ASID 0 is reserved for
    /// the empty TTBR0 table).
    used: alloc::vec::Vec<u64>,
    /// Per CPU: the value it was using at the last rollover (Linux
    /// `reserved_asids`); its ASID stays used in this generation.
    reserved: [u64; MAX_CPUS],
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn fresh_bitmap(bits: u32) -> alloc::vec::Vec<u64> {
    let n = 1usize << bits;
    let mut used = alloc::vec![0u64; n.div_ceil(64)];
    used[0] = 1;
    used
}

/// Fewest bits allowed: more ASIDs than CPUs, so a rollover that keeps
/// every CPU's active one still leaves one to hand out (Linux's
/// `NUM_USER_ASIDS > NR_CPUS`).
static MIN_BITS: AtomicU64 = AtomicU64::new(2);
/// What the CPU has (8 or 16).
static CPU_BITS: AtomicU64 = AtomicU64::new(8);

/// `ncpus`: the CPUs that may run processes.
pub fn init(cpu_bits: u32, requested: Option<u32>, ncpus: usize) {
    let min = (2..cpu_bits).find(|&b| (1usize << b) - 1 > ncpus).unwrap_or(cpu_bits);
    MIN_BITS.store(min as u64, Ordering::Relaxed);
    CPU_BITS.store(cpu_bits as u64, Ordering::Relaxed);
    let bits = requested.map(|r| r.clamp(min, cpu_bits)).unwrap_or(cpu_bits);
    BITS.store(bits as u64, Ordering::Relaxed);
    *STATE.lock() = Some(State { generation: 1, used: fresh_bitmap(bits), reserved: [0; MAX_CPUS] });
}

pub fn bits() -> u32 {
    BITS.load(Ordering::Relaxed) as u32
}

impl State {
    /// Linux `flush_context`: a new generation whose only used ASIDs are
    /// the ones CPUs are running now; the TLB is flushed everywhere.
    fn rollover(&mut self) {
        self.generation += 1;
        self.used = fresh_bitmap(bits());
        for (c, r) in self.reserved.iter_mut().enumerate() {
            let v = ACTIVE[c].load(Ordering::Relaxed);
            *r = v;
            let a = (v & 0xffff) as usize;
            if v != 0 && a < self.used.len() * 64 {
                self.used[a / 64] |= 1 << (a % 64);
            }
        }
        ROLLOVERS.fetch_add(1, Ordering::Relaxed);
        super::tlbflush::flush_tlb_all();
    }

    fn free_asid(&self) -> Option<usize> {
        let n = 1usize << bits();
        (1..n).find(|&a| self.used[a / 64] & (1 << (a % 64)) == 0)
    }

    /// Linux `check_update_reserved_asid`: an old value some CPU kept
    /// across the rollover moves to this generation unchanged.
    fn take_reserved(&mut self, old: u64) -> Option<u64> {
        if old == 0 || !self.reserved.contains(&old) {
            return None;
        }
        let new = (self.generation << 16) | (old & 0xffff);
        for r in self.reserved.iter_mut().filter(|r| **r == old) {
            *r = new;
        }
        // The CPUs still running it hold the same ASID number, now of this
        // generation (so the next rollover keeps it for the same mm again).
        for a in ACTIVE.iter().filter(|a| a.load(Ordering::Relaxed) == old) {
            a.store(new, Ordering::Relaxed);
        }
        Some(new)
    }
}

/// The ASID `slot` (generation << 16 | asid) runs with on this CPU now,
/// allocating (and rolling over) if it is from an older generation. Records
/// it as this CPU's active ASID: call it right before writing TTBR0.
pub fn asid_for(slot: &AtomicU64) -> u16 {
    asid_for_locked(&mut STATE.lock(), slot)
}

fn asid_for_locked(g: &mut spin::MutexGuard<'_, Option<State>>, slot: &AtomicU64) -> u16 {
    let st = g.as_mut().expect("ASIDs not initialised");
    let mut cur = slot.load(Ordering::Relaxed);
    if cur >> 16 != st.generation {
        cur = match st.take_reserved(cur) {
            Some(v) => v,
            None => {
                let a = match st.free_asid() {
                    Some(a) => a,
                    None => {
                        st.rollover();
                        // The rollover may have reserved this very mm's ASID.
                        match st.take_reserved(cur) {
                            Some(v) => {
                                slot.store(v, Ordering::Relaxed);
                                ACTIVE[percpu::this_cpu().id].store(v, Ordering::Relaxed);
                                return v as u16;
                            }
                            None => st.free_asid().expect("a rollover frees ASIDs"),
                        }
                    }
                };
                st.used[a / 64] |= 1 << (a % 64);
                (st.generation << 16) | a as u64
            }
        };
        slot.store(cur, Ordering::Relaxed);
    }
    ACTIVE[percpu::this_cpu().id].store(cur, Ordering::Relaxed);
    cur as u16
}

/// Points this CPU's TTBR0 at `empty` (ASID 0) and records it: TTBR0 is
/// written first and the record cleared after, under the allocator lock,
/// so a rollover on another CPU never misses an ASID TTBR0 still holds.
///
/// # Safety
/// Nothing may run from TTBR0 addresses while it changes.
pub unsafe fn switch_to_empty(empty: u64) {
    let _g = STATE.lock();
    // SAFETY: guaranteed by the caller.
    unsafe { crate::arch::aarch64::cpu::switch_ttbr0(empty) };
    ACTIVE[percpu::this_cpu().id].store(0, Ordering::Relaxed);
}

/// [`asid_for`] and the TTBR0 write in one critical section: the ASID is
/// recorded as active before TTBR0 holds it, and no rollover can come in
/// between (Linux does the equivalent with its per-CPU flush-pending bit).
///
/// # Safety
/// `pgd` is a complete table set; nothing may run from TTBR0 addresses
/// while it changes.
pub unsafe fn switch_to(slot: &AtomicU64, pgd: u64, current_ttbr0: u64) {
    let asid = asid_for_locked(&mut STATE.lock(), slot);
    let want = pgd | ((asid as u64) << 48);
    if current_ttbr0 != want {
        // SAFETY: guaranteed by the caller.
        unsafe { crate::arch::aarch64::cpu::switch_ttbr0(want) };
    }
}

/// Whether a CPU other than this one has `slot`'s current value active.
pub fn active_elsewhere(slot: &AtomicU64) -> bool {
    let _g = STATE.lock();
    let v = slot.load(Ordering::Relaxed);
    let me = percpu::this_cpu().id;
    v != 0 && ACTIVE.iter().enumerate().any(|(c, a)| c != me && a.load(Ordering::Relaxed) == v)
}

/// The value CPU `cpu`'s TTBR0 holds (for tests and `cpus`).
pub fn active_on(cpu: usize) -> u64 {
    ACTIVE[cpu].load(Ordering::Relaxed)
}

/// For tests: a rollover now, into a space of `bits` ASID bits (clamped
/// to what the CPU has; `None`: all of them again). Every mm gets a new ASID when it next runs,
/// except those running on some CPU, which keep theirs.
pub fn force_rollover(bits: Option<u32>) {
    let mut g = STATE.lock();
    let st = g.as_mut().expect("ASIDs not initialised");
    let cpu_bits = CPU_BITS.load(Ordering::Relaxed) as u32;
    BITS.store(
        bits.unwrap_or(cpu_bits).clamp(MIN_BITS.load(Ordering::Relaxed) as u32, cpu_bits) as u64,
        Ordering::Relaxed,
    );
    st.rollover();
}

/// Releases the ASID held in `slot`, after flushing its TLB entries.
pub fn release(slot: &AtomicU64) {
    let mut g = STATE.lock();
    let Some(st) = g.as_mut() else { return };
    let cur = slot.load(Ordering::Relaxed);
    if cur >> 16 == st.generation {
        let a = (cur & 0xffff) as usize;
        super::tlbflush::flush_tlb_asid(a as u16);
        st.used[a / 64] &= !(1 << (a % 64));
    }
    slot.store(0, Ordering::Relaxed);
}
