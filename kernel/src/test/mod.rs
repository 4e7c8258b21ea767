//! The in-kernel test runner.
//!
//! A test is a function `fn name() -> Result<(), String>` with
//! `kernel_test!(name);` on the line above it. The macro places a [`Test`]
//! named `name` in the linker section `.kernel_tests`, which the runner reads
//! between `__kernel_tests_start` and `__kernel_tests_end` (as the exception
//! table is read), so no list of tests exists to forget. Tests run module by
//! module in [`MODULE_ORDER`] order and top to bottom within a file.
//!
//! Each test runs on the emulated CPU against the real MMU and prints
//! `PASS name`, `FAIL name: why`, or `SKIP name: why` when it cannot apply
//! in this configuration (see [`cannot_apply`]); the run ends with
//! `invariants` and `N passed, M failed`, where a SKIP counts as neither.
//! The build script counts the `kernel_test!` lines in the sources (and
//! refuses a name declared twice); a run that linked a different number of
//! tests (a file with tests that is not a module here, say) fails.

use alloc::string::String;
use alloc::vec::Vec;
use spin::Mutex;

use crate::println;

/// Registers `fn name() -> Result<(), String>` as the in-kernel test `name`:
/// a [`Test`] in the `.kernel_tests` section. Written `kernel_test!(name);`
/// on a line of its own above the function (the build script counts those
/// lines).
macro_rules! kernel_test {
    ($name:ident) => {
        const _: () = {
            #[used]
            #[unsafe(link_section = ".kernel_tests")]
            static TEST: $crate::test::Test =
                $crate::test::Test { name: stringify!($name), f: $name, module: module_path!(), line: line!() };
        };
    };
}

mod af_tests;
mod at_random;
mod boot_tests;
mod cursor_tests;
mod dbm_smp_tests;
mod debug_table_tests;
mod fail_alloc_tests;
mod insert_tests;
mod irq_tests;
mod khugepaged_tests;
mod migrate_tests;
mod mm_tests;
mod pte_tests;
mod sched_tests;
mod swap_tests;
mod syscall_tests;
mod table_tests;
mod uffd_tests;
mod vmscan_tests;

/// The test modules in run order (a module missing here runs last).
const MODULE_ORDER: &[&str] = &[
    "boot_tests",
    "mm_tests",
    "table_tests",
    "cursor_tests",
    "khugepaged_tests",
    "swap_tests",
    "at_random",
    "syscall_tests",
    "irq_tests",
    "insert_tests",
    "af_tests",
    "sched_tests",
    "debug_table_tests",
    "fail_alloc_tests",
    "dbm_smp_tests",
];
pub use table_tests::at_outcome;

pub type TestFn = fn() -> Result<(), String>;

/// The leaf entry that maps `va` in process `p`'s tables, if any.
pub(crate) fn desc_of(p: &str, va: crate::mm::addr::VirtAddr) -> Option<crate::mm::desc::Desc> {
    crate::proc::with_tables(p, |_, t| match t.translate(va) {
        crate::mm::pgtable::Translation::Mapped { desc, .. } => Some(desc),
        _ => None,
    })
    .ok()
    .flatten()
}

/// `size` bytes of anonymous private read/write memory, base pages (the
/// tests' usual `mmap`; struct update syntax changes the rest).
pub(crate) fn anon(size: u64) -> crate::mm::mmap::MmapArgs {
    crate::mm::mmap::MmapArgs {
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

/// One in-kernel test, as `kernel_test!` places it in `.kernel_tests`.
pub struct Test {
    /// The function's name.
    name: &'static str,
    f: TestFn,
    /// Where it is declared, which orders the run.
    module: &'static str,
    line: u32,
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

unsafe extern "C" {
    static __kernel_tests_start: u8;
    static __kernel_tests_end: u8;
}

/// Every test linked into the kernel, in section order.
fn linked() -> &'static [Test] {
    let start = (&raw const __kernel_tests_start).cast::<Test>();
    let end = (&raw const __kernel_tests_end).cast::<Test>();
    // SAFETY: the linker script places only `kernel_test!` statics (each a
    // `Test`, whose size is a multiple of its alignment) between the two
    // symbols, and the section is never written.
    unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) }
}

/// Every test in run order: by module in [`MODULE_ORDER`] (others after,
/// by path), then by line.
fn all() -> Vec<&'static Test> {
    let rank = |m: &str| {
        let name = m.strip_prefix(concat!(module_path!(), "::"));
        MODULE_ORDER.iter().position(|&o| Some(o) == name).unwrap_or(MODULE_ORDER.len())
    };
    let mut v: Vec<&'static Test> = linked().iter().collect();
    v.sort_by(|a, b| (rank(a.module), a.module, a.line).cmp(&(rank(b.module), b.module, b.line)));
    v
}

/// How many `kernel_test!` lines the build script counted in the sources.
const DECLARED: &str = env!("PAGELAB_KERNEL_TESTS");

/// The linked tests are exactly the declared ones: a file whose tests are
/// declared but that is not a module of the kernel would otherwise vanish.
fn check_registry() -> Result<(), String> {
    let linked = linked().len();
    if DECLARED.parse() != Ok(linked) {
        return Err(alloc::format!("{linked} tests linked but {DECLARED} declared with kernel_test!"));
    }
    Ok(())
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
    for test in all().into_iter().filter(|t| filter.is_none_or(|f| t.name.contains(f))) {
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
    println!("running {} in-kernel tests", linked().len());
    let registry = check_registry();
    if let Err(e) = &registry {
        println!("error: {e}");
    }
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
    let r = usize::from(registry.is_err());
    println!("{} passed, {} failed", t.passed + p, t.failed + f + r);
    t.failed + f + r
}

/// How many tests have a name containing `filter`.
pub fn matching(filter: &str) -> usize {
    linked().iter().filter(|t| t.name.contains(filter)).count()
}
