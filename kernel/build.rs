//! Passes the linker script to the kernel binary (only for the bare-metal target).
fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let script = std::path::Path::new(&manifest).join("../linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "none" {
        println!("cargo:rustc-link-arg-bins=-T{}", script.canonicalize().unwrap().display());
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
