//! The pagelab kernel binary. Everything lives in the `pagelab` library crate;
//! this file only makes the linker pull it in on the bare-metal target.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[used]
static KEEP: unsafe extern "C" fn(u64, u64, u64) -> ! = pagelab::kernel_main;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("pagelab is a bare-metal AArch64 kernel: build and boot it with ./qemu-run.sh");
    std::process::exit(2);
}
