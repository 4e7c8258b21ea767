//! Allocation-failure injection, after Linux's fault injection
//! (`fail_page_alloc`, `failslab`): while armed, a seeded fraction of frame,
//! page-table and (fallible) heap allocations fail, so that every error path
//! behind them runs.
//!
//! `pagelab.fail-alloc=PPM[,SEED]` configures it at boot; nothing is injected
//! until [`arm`] is called, which the console does only around the execution
//! of one command line (never around boot, its own bookkeeping or a test
//! oracle). The decision is a SplitMix64 stream: for a given seed and the same
//! sequence of calls it fails the same calls.
//!
//! Cost when off: [`should_fail`] is one relaxed load of a value that is 0
//! unless injection is both configured and armed.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// What kind of allocation asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    /// A frame for user memory (anonymous, shmem, copy-on-write copies).
    Frame,
    /// A translation-table page.
    Table,
    /// A fallible kernel-heap allocation (`try_reserve` sites).
    Heap,
}

/// Parts per million: the whole.
pub const MILLION: u32 = 1_000_000;

/// The rate in force: the configured rate while armed, else 0.
static ACTIVE_PPM: AtomicU32 = AtomicU32::new(0);
static CONFIGURED_PPM: AtomicU32 = AtomicU32::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
/// SplitMix64 state: each decision advances it by one step.
static STATE: AtomicU64 = AtomicU64::new(0);
static INJECTED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// [`fail_after`]: decisions left that pass before every one fails.
static SKIP: AtomicU64 = AtomicU64::new(0);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Why a `pagelab.fail-alloc=` value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgError {
    /// PPM is not a number.
    BadRate,
    /// PPM is above 1,000,000.
    RateOutOfRange,
    /// SEED is not a number.
    BadSeed,
}

impl core::fmt::Display for ArgError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ArgError::BadRate => "PPM is not a number",
            ArgError::RateOutOfRange => "PPM is out of range (at most 1000000)",
            ArgError::BadSeed => "SEED is not a number",
        })
    }
}

/// Parses `PPM[,SEED]` (SEED defaults to 1).
pub fn parse_arg(s: &str) -> Result<(u32, u64), ArgError> {
    let (ppm, seed) = match s.split_once(',') {
        Some((p, s)) => (p, Some(s)),
        None => (s, None),
    };
    let ppm = crate::util::parse_number(ppm).ok_or(ArgError::BadRate)?;
    if ppm > MILLION as u64 {
        return Err(ArgError::RateOutOfRange);
    }
    let seed = match seed {
        Some(s) => crate::util::parse_number(s).ok_or(ArgError::BadSeed)?,
        None => 1,
    };
    Ok((ppm as u32, seed))
}

/// Sets the rate (parts per million of allocations) and restarts the
/// random stream from `seed`. Keeps the armed state.
pub fn configure(ppm: u32, seed: u64) {
    let ppm = ppm.min(MILLION);
    SKIP.store(0, Ordering::Relaxed);
    STATE.store(seed, Ordering::Relaxed);
    CONFIGURED_PPM.store(ppm, Ordering::Relaxed);
    let armed = ARMED.load(Ordering::Relaxed);
    ACTIVE_PPM.store(if armed { ppm } else { 0 }, Ordering::Release);
}

/// Lets the next `n` allocations (while armed) succeed and fails every one
/// after them, until [`configure`] is called again: a test can fail each
/// allocation of an operation in turn (n = 0, 1, 2, ...).
pub fn fail_after(n: u64) {
    configure(MILLION, 0);
    SKIP.store(n, Ordering::Relaxed);
}

/// Turns injection on or off; returns whether it was on.
pub fn arm(on: bool) -> bool {
    let was = ARMED.swap(on, Ordering::AcqRel);
    ACTIVE_PPM.store(if on { CONFIGURED_PPM.load(Ordering::Relaxed) } else { 0 }, Ordering::Release);
    was
}

/// The configured rate in parts per million (armed or not).
pub fn rate() -> u32 {
    CONFIGURED_PPM.load(Ordering::Relaxed)
}

/// Failures injected so far, all kinds together.
pub fn injected() -> u64 {
    INJECTED.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Failures injected so far for one kind.
pub fn injected_of(kind: AllocKind) -> u64 {
    INJECTED[kind as usize].load(Ordering::Relaxed)
}

/// Whether this allocation should fail. Call it first thing in an
/// allocator whose callers handle failure.
#[inline]
pub fn should_fail(kind: AllocKind) -> bool {
    let ppm = ACTIVE_PPM.load(Ordering::Relaxed);
    ppm != 0 && decide(kind, ppm)
}

#[cold]
fn decide(kind: AllocKind, ppm: u32) -> bool {
    if SKIP.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
        return false;
    }
    let x = splitmix64(STATE.fetch_add(GOLDEN, Ordering::Relaxed).wrapping_add(GOLDEN));
    // The top 32 bits scaled to [0, 1e6): no modulo bias worth speaking of.
    let fail = ((x >> 32) * MILLION as u64) >> 32 < ppm as u64;
    if fail {
        INJECTED[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
    fail
}

/// SplitMix64's output function (Steele, Lea, Flood 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `f` with injection off (a test oracle, bookkeeping), then restores
/// the armed state.
pub fn unarmed<R>(f: impl FnOnce() -> R) -> R {
    let was = arm(false);
    let r = f();
    arm(was);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::sync::Mutex;
    use std::vec::Vec;

    // The state is global: one test at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn run(ppm: u32, seed: u64, n: usize) -> Vec<bool> {
        configure(ppm, seed);
        arm(true);
        let v = (0..n).map(|_| should_fail(AllocKind::Frame)).collect();
        arm(false);
        v
    }

    #[test]
    fn parse() {
        assert_eq!(parse_arg("2000"), Ok((2000, 1)));
        assert_eq!(parse_arg("2000,42"), Ok((2000, 42)));
        assert_eq!(parse_arg("0x10,0x20"), Ok((16, 32)));
        assert_eq!(parse_arg("1000000"), Ok((MILLION, 1)));
        assert_eq!(parse_arg("1000001"), Err(ArgError::RateOutOfRange));
        assert_eq!(parse_arg("x"), Err(ArgError::BadRate));
        assert_eq!(parse_arg(""), Err(ArgError::BadRate));
        assert_eq!(parse_arg("5,"), Err(ArgError::BadSeed));
        assert_eq!(parse_arg("5,y"), Err(ArgError::BadSeed));
    }

    #[test]
    fn deterministic_rate_and_arming() {
        let _g = SERIAL.lock().unwrap();
        // Same seed, same sequence; another seed, another sequence.
        let a = run(50_000, 7, 20_000);
        assert_eq!(a, run(50_000, 7, 20_000));
        assert_ne!(a, run(50_000, 8, 20_000));
        // The rate is about right: 5% of 20,000 is 1,000 (sd ~31).
        let n = a.iter().filter(|&&f| f).count();
        assert!((850..1150).contains(&n), "{n} failures");
        // Counted.
        let before = injected();
        run(50_000, 7, 20_000);
        assert_eq!(injected() - before, n as u64);
        // Unarmed, or at rate 0, or through `unarmed`: never.
        configure(MILLION, 3);
        assert!((0..1000).all(|_| !should_fail(AllocKind::Table)));
        arm(true);
        assert!(should_fail(AllocKind::Heap));
        assert!(!unarmed(|| should_fail(AllocKind::Heap)));
        assert!(ARMED.load(Ordering::Relaxed), "unarmed restores the armed state");
        configure(0, 3);
        assert!((0..1000).all(|_| !should_fail(AllocKind::Table)));
        arm(false);
        // Every call fails at 1,000,000 ppm; none at 1 ppm over a few thousand (almost surely).
        assert!(run(MILLION, 9, 1000).iter().all(|&f| f));
        assert!(run(1, 9, 1000).iter().filter(|&&f| f).count() <= 1);
        // fail_after(3): three pass, then all fail; configure ends it.
        fail_after(3);
        arm(true);
        let v: Vec<bool> = (0..6).map(|_| should_fail(AllocKind::Frame)).collect();
        assert_eq!(v, [false, false, false, true, true, true]);
        configure(0, 0);
        assert!(!should_fail(AllocKind::Frame));
        arm(false);
    }
}
