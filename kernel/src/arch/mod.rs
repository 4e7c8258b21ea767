//! Architecture support. pagelab is AArch64-only; the pure parts (ESR
//! decoding, register value layouts) also build on the host for unit tests.
pub mod aarch64;
pub use aarch64::*;
