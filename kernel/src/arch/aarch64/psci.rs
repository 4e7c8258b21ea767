//! PSCI through the `smccc` crate, with the conduit the devicetree names.

use core::sync::atomic::{AtomicU8, Ordering};

use smccc::psci;
use smccc::{Hvc, Smc};

use crate::board::dt::PsciConduit;

static CONDUIT: AtomicU8 = AtomicU8::new(0); // 0 none, 1 hvc, 2 smc

pub fn init(c: Option<PsciConduit>) {
    CONDUIT.store(
        match c {
            None => 0,
            Some(PsciConduit::Hvc) => 1,
            Some(PsciConduit::Smc) => 2,
        },
        Ordering::Relaxed,
    );
}

pub fn available() -> bool {
    CONDUIT.load(Ordering::Relaxed) != 0
}

#[derive(Debug)]
pub enum PsciError {
    NoPsci,
    Psci(psci::Error),
}

macro_rules! call {
    ($f:ident ( $($a:expr),* )) => {
        match CONDUIT.load(Ordering::Relaxed) {
            1 => psci::$f::<Hvc>($($a),*).map_err(PsciError::Psci),
            2 => psci::$f::<Smc>($($a),*).map_err(PsciError::Psci),
            _ => Err(PsciError::NoPsci),
        }
    };
}

/// Starts CPU `mpidr` at physical `entry` with `context` in x0.
pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> Result<(), PsciError> {
    call!(cpu_on(mpidr, entry, context))
}

pub fn system_off() -> Result<(), PsciError> {
    call!(system_off())
}

pub fn system_reset() -> Result<(), PsciError> {
    call!(system_reset())
}

pub fn version() -> Result<(u16, u16), PsciError> {
    let v: Result<psci::Version, PsciError> = call!(version());
    v.map(|v| (v.major, v.minor))
}
