//! Passes the linker script to the kernel binary (only for the bare-metal
//! target) and counts the in-kernel tests the sources declare.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let script = Path::new(&manifest).join("../linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "none" {
        println!("cargo:rustc-link-arg-bins=-T{}", script.canonicalize().unwrap().display());
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
    let src = Path::new(&manifest).join("src");
    println!("cargo:rerun-if-changed={}", src.display());
    let tests = declared_tests(&src).unwrap_or_else(|e| panic!("{e}"));
    println!("cargo:rustc-env=PAGELAB_KERNEL_TESTS={}", tests.len());
}

/// Every `kernel_test!(name);` line under `dir`, by name. The kernel compares
/// the count with the tests it linked; a name declared twice is refused here.
fn declared_tests(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    files.sort();
    let mut tests = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("kernel_test!(") else { continue };
            let at = format!("{}:{}", file.display(), i + 1);
            let name = rest
                .strip_suffix(");")
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .ok_or_else(|| format!("{at}: write `kernel_test!(name);` on a line of its own"))?;
            if let Some(first) = tests.insert(name.to_string(), at.clone()) {
                return Err(format!("{at}: in-kernel test `{name}` is also declared at {first}"));
            }
        }
    }
    Ok(tests)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}
