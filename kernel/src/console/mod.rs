//! The scenario-language console (see ../shared/SCENARIOS.md, the contract).
//!
//! One engine, [`Session`], runs lines from the serial port (interactive,
//! with the line editor of [`editor`]) and from a script (the initrd
//! `qemu-run.sh --script` passes). Assertions print `PASS line N: ...` /
//! `FAIL line N: ...`; a command that cannot be carried out prints
//! `error: line N: ...` and counts as a failure, unless the line starts with
//! `!` (or `!"TEXT"`: with an error that contains TEXT), which expects
//! exactly that. Ranges are resolved by [`parse`]; walk, atcheck and query
//! over ranges of any size are in `inspect`. At the end of a script:
//! `invariants`, then `N passed, M failed`.
pub mod editor;
pub mod parse;

#[cfg(target_os = "none")]
pub mod commands;
#[cfg(target_os = "none")]
mod inspect;
#[cfg(target_os = "none")]
mod proc_cmds;
#[cfg(target_os = "none")]
pub use commands::{interactive, invariants as invariants_for_tests, run_script};

/// `expect-fault`'s verdict for an access that ended as `end` (for the
/// in-kernel tests): `Ok(assertion)` or the command's error.
#[cfg(target_os = "none")]
pub fn expect_fault_verdict_for_tests(
    p: &str,
    va: crate::mm::addr::VirtAddr,
    end: crate::proc::RunEnd,
) -> Result<Result<(), alloc::string::String>, alloc::string::String> {
    match proc_cmds::expect_fault_verdict(p, "write", va, end)? {
        commands::Outcome::Assert(r) => Ok(r),
        _ => Err("not an assertion".into()),
    }
}
