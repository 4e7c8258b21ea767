//! The in-kernel test runner (stable Rust: a plain table of functions).
//!
//! Each test runs on the emulated CPU against the real MMU and prints
//! `PASS name` or `FAIL name: why`; the run ends with `invariants` and
//! `N passed, M failed`.

use alloc::string::String;

use crate::println;

mod af_tests;
mod at_random;
mod boot_tests;
mod debug_table_tests;
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
        .chain(at_random::TESTS.iter())
        .chain(syscall_tests::TESTS.iter())
        .chain(irq_tests::TESTS.iter())
        .chain(insert_tests::TESTS.iter())
        .chain(af_tests::TESTS.iter())
        .chain(sched_tests::TESTS.iter())
        .chain(debug_table_tests::TESTS.iter())
}

/// Runs the tests whose name contains `filter` (all when None); returns failures.
pub fn run_filtered(filter: Option<&str>) -> usize {
    let (mut passed, mut failed) = (0, 0);
    for t in all().filter(|t| filter.is_none_or(|f| t.name.contains(f))) {
        match (t.f)() {
            Ok(()) => {
                println!("PASS {}", t.name);
                passed += 1;
            }
            Err(e) => {
                println!("FAIL {}: {e}", t.name);
                failed += 1;
            }
        }
    }
    if filter.is_some() {
        println!("{passed} passed, {failed} failed");
    }
    failed
}

/// `pagelab.mode=test`: every test, then invariants and the summary line.
pub fn run_all() -> usize {
    let total = all().count();
    println!("running {total} in-kernel tests");
    let failed = run_filtered(None);
    let passed_before = total - failed;
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
    println!("{} passed, {} failed", passed_before + p, failed + f);
    failed + f
}

/// How many tests have a name containing `filter`.
pub fn matching(filter: &str) -> usize {
    all().filter(|t| t.name.contains(filter)).count()
}
