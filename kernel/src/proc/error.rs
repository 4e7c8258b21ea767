//! Why a process operation failed, with the errno a system call returns
//! for it. Memory-management failures are [`MmError`]s inside.

use core::fmt;

use crate::arch::aarch64::esr::Esr;
use crate::errno::{EEXIST, EINVAL};
use crate::mm::error::{GupError, MmError, Need};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcError {
    NoSuchProcess,
    ProcessExists,
    NoSuchRegion,
    RegionExists,
    /// The memory-management side refused or ran out.
    Mm(MmError),
    /// A GUP handle operation failed.
    Gup(GupError),
    /// The agent did not end the run the way the operation needs (it
    /// faulted or trapped): the final ESR.
    AgentLost {
        esr: u64,
    },
    /// A system call made from the agent returned this errno (positive)
    /// and the kernel kept no reason.
    Errno(i64),
    /// A bad argument to a process operation (a zero count).
    Invalid,
}

impl ProcError {
    /// The errno Linux returns for this (positive).
    pub fn errno(self) -> i64 {
        match self {
            ProcError::Mm(e) => e.errno(),
            ProcError::Gup(e) => e.errno(),
            ProcError::ProcessExists | ProcError::RegionExists => EEXIST,
            ProcError::Errno(e) => e,
            ProcError::NoSuchProcess | ProcError::NoSuchRegion | ProcError::AgentLost { .. } | ProcError::Invalid => {
                EINVAL
            }
        }
    }

    pub fn is_oom(self) -> bool {
        match self {
            ProcError::Mm(e) => e.is_oom(),
            ProcError::Gup(e) => e.is_oom(),
            _ => false,
        }
    }
}

impl From<MmError> for ProcError {
    fn from(e: MmError) -> Self {
        ProcError::Mm(e)
    }
}

impl From<GupError> for ProcError {
    fn from(e: GupError) -> Self {
        ProcError::Gup(e)
    }
}

impl From<Need> for ProcError {
    fn from(n: Need) -> Self {
        ProcError::Mm(MmError::NoMemory(n))
    }
}

impl fmt::Display for ProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProcError::NoSuchProcess => f.write_str("no such process"),
            ProcError::ProcessExists => f.write_str("a process of that name already exists"),
            ProcError::NoSuchRegion => f.write_str("no such region"),
            ProcError::RegionExists => f.write_str("a region of that name already exists"),
            ProcError::Mm(e) => e.fmt(f),
            ProcError::Gup(e) => e.fmt(f),
            ProcError::AgentLost { esr } => write!(f, "the agent did not come back: {}", Esr(esr)),
            ProcError::Errno(e) => write!(f, "failed with {}", crate::errno::name(e)),
            ProcError::Invalid => f.write_str("invalid argument"),
        }
    }
}

/// For the console's and the tests' messages: `?` converts through Display.
impl From<ProcError> for alloc::string::String {
    fn from(e: ProcError) -> Self {
        alloc::string::ToString::to_string(&e)
    }
}
