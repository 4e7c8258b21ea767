//! The in-kernel test runner (stable Rust: a plain table of functions).
//!
//! Each test runs on the emulated CPU against the real MMU and prints
//! `PASS name`, `FAIL name: why`, or `SKIP name: why` when it cannot apply
//! in this configuration (see [`cannot_apply`]); the run ends with
//! `invariants` and `N passed, M failed`, where a SKIP counts as neither.

use alloc::string::String;
use spin::Mutex;

use crate::println;

mod af_tests;
mod at_random;
mod boot_tests;
mod cursor_tests;
mod debug_table_tests;
mod fail_alloc_tests;
mod insert_tests;
mod irq_tests;
mod mm_tests;
mod sched_tests;
mod syscall_tests;
mod table_tests;
pub use table_tests::at_outcome;

pub type TestFn = fn() -> Result<(), String>;

/// `size` bytes of anonymous private read/write memory, base pages (the
/// tests' usual `mmap`; struct update syntax changes the rest).
pub(crate) fn anon(size: u64) -> crate::proc::MmapArgs {
    crate::proc::MmapArgs {
        size,
        writable: true,
        readable: true,
        align: 0,
        folio_order: 0,
        pfn: None,
        shared: false,
        memfd: None,
        file: None,
        noreserve: false,
    }
}

/// Deterministic xorshift64*, so a failure names a seed that reproduces it.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

pub struct Test {
    pub name: &'static str,
    pub f: TestFn,
}

/// Fails the current test with a formatted message.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(alloc::format!($($arg)*));
        }
    };
}

fn all() -> impl Iterator<Item = &'static Test> {
    boot_tests::TESTS
        .iter()
        .chain(mm_tests::TESTS.iter())
        .chain(table_tests::TESTS.iter())
        .chain(cursor_tests::TESTS.iter())
        .chain(at_random::TESTS.iter())
        .chain(syscall_tests::TESTS.iter())
        .chain(irq_tests::TESTS.iter())
        .chain(insert_tests::TESTS.iter())
        .chain(af_tests::TESTS.iter())
        .chain(sched_tests::TESTS.iter())
        .chain(debug_table_tests::TESTS.iter())
        .chain(fail_alloc_tests::TESTS.iter())
}

/// Why the running test cannot apply, once it said so.
static CANNOT_APPLY: Mutex<Option<String>> = Mutex::new(None);

/// Ends a test that cannot apply in this configuration (no interrupts, one
/// CPU, a CPU feature it needs is missing): returns Ok, and the runner prints
/// `SKIP name: why` instead of PASS and does not count it as passed. A test
/// may check what it can first; a failure before this still fails it.
/// `./qemu-run.sh test` fails when a test only ever skipped in all its
/// configurations, so every test really runs somewhere.
pub fn cannot_apply(why: &str) -> Result<(), String> {
    *CANNOT_APPLY.lock() = Some(why.into());
    Ok(())
}

/// What a run of tests came to.
#[derive(Clone, Copy, Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Runs the tests whose name contains `filter` (all when None).
pub fn run_filtered(filter: Option<&str>) -> Tally {
    let mut t = Tally::default();
    for test in all().filter(|t| filter.is_none_or(|f| t.name.contains(f))) {
        *CANNOT_APPLY.lock() = None;
        let r = (test.f)();
        let skipped = CANNOT_APPLY.lock().take();
        match (r, skipped) {
            (Err(e), _) => {
                println!("FAIL {}: {e}", test.name);
                t.failed += 1;
            }
            (Ok(()), Some(why)) => {
                println!("SKIP {}: {why}", test.name);
                t.skipped += 1;
            }
            (Ok(()), None) => {
                println!("PASS {}", test.name);
                t.passed += 1;
            }
        }
    }
    if filter.is_some() {
        println!("{} passed, {} failed", t.passed, t.failed);
    }
    t
}

/// `pagelab.mode=test`: every test, then invariants and the summary line.
/// Returns the number of failures.
pub fn run_all() -> usize {
    println!("running {} in-kernel tests", all().count());
    let t = run_filtered(None);
    let (p, f) = match crate::console::invariants_for_tests() {
        Ok(()) => {
            println!("PASS invariants");
            (1, 0)
        }
        Err(e) => {
            println!("FAIL invariants: {e}");
            (0, 1)
        }
    };
    println!("{} passed, {} failed", t.passed + p, t.failed + f);
    t.failed + f
}

/// How many tests have a name containing `filter`.
pub fn matching(filter: &str) -> usize {
    all().filter(|t| t.name.contains(filter)).count()
}
