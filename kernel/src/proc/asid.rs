//! ASID allocation with a generation scheme (as Linux arm64's
//! `arch/arm64/mm/context.c`, for one CPU running EL0 at a time).
//!
//! An mm's ASID is valid only for the generation it was handed out in.
//! When every ASID is in use, the generation advances, the whole TLB is
//! invalidated everywhere (`TLBI VMALLE1IS`) and ASIDs are handed out again
//! as address spaces next run; an mm from an older generation gets a fresh
//! one then. So no translation cached under an old ASID value can ever be
//! used by the address space that receives that value next.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

/// ASID bits the kernel uses: 16 or 8 from the CPU, or fewer when
/// `pagelab.asid-bits=N` asks (tests use this to force rollovers).
static BITS: AtomicU64 = AtomicU64::new(8);
/// Rollovers so far (for tests and `info`).
pub static ROLLOVERS: AtomicU64 = AtomicU64::new(0);

struct State {
    generation: u64,
    /// One bit per ASID of the current generation (ASID 0 is reserved for
    /// the empty TTBR0 table).
    used: alloc::vec::Vec<u64>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

pub fn init(cpu_bits: u32, requested: Option<u32>) {
    let bits = requested.map(|r| r.clamp(2, cpu_bits)).unwrap_or(cpu_bits);
    BITS.store(bits as u64, Ordering::Relaxed);
    let n = 1usize << bits;
    let mut used = alloc::vec![0u64; n.div_ceil(64)];
    used[0] = 1;
    *STATE.lock() = Some(State { generation: 1, used });
}

pub fn bits() -> u32 {
    BITS.load(Ordering::Relaxed) as u32
}

/// The ASID `slot` (generation << 16 | asid) should run with now, allocating
/// (and rolling over) if it is from an older generation.
pub fn asid_for(slot: &AtomicU64) -> u16 {
    let mut g = STATE.lock();
    let st = g.as_mut().expect("ASIDs not initialised");
    let cur = slot.load(Ordering::Relaxed);
    if cur >> 16 == st.generation {
        return cur as u16;
    }
    let n = 1usize << BITS.load(Ordering::Relaxed);
    let find = |used: &alloc::vec::Vec<u64>| (1..n).find(|&a| used[a / 64] & (1 << (a % 64)) == 0);
    let asid = match find(&st.used) {
        Some(a) => a,
        None => {
            // Rollover: new generation, nothing cached may survive.
            st.generation += 1;
            st.used.iter_mut().for_each(|w| *w = 0);
            st.used[0] = 1;
            ROLLOVERS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: TLB maintenance only.
            unsafe { core::arch::asm!("dsb ishst", "tlbi vmalle1is", "dsb ish", "isb") };
            1
        }
    };
    st.used[asid / 64] |= 1 << (asid % 64);
    slot.store((st.generation << 16) | asid as u64, Ordering::Relaxed);
    asid as u16
}

/// Releases the ASID held in `slot`, after flushing its TLB entries.
pub fn release(slot: &AtomicU64) {
    let mut g = STATE.lock();
    let Some(st) = g.as_mut() else { return };
    let cur = slot.load(Ordering::Relaxed);
    if cur >> 16 == st.generation {
        let a = (cur & 0xffff) as usize;
        // SAFETY: TLB maintenance only.
        unsafe { core::arch::asm!("dsb ishst", "tlbi aside1is, {}", "dsb ish", "isb", in(reg) (a as u64) << 48) };
        st.used[a / 64] &= !(1 << (a % 64));
    }
    slot.store(0, Ordering::Relaxed);
}
