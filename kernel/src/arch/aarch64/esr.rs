//! ESR_ELx decoding into named types (Arm ARM D24.2.41, "ESR_EL1").
//!
//! Pure logic: used by the exception handler, the fault path and `pl-esr`
//! style reports, and unit-tested on the host.

use core::fmt;

/// Exception class, ESR_ELx.EC (bits 31:26).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    Unknown,
    WfiWfe,
    FpSimdAccess,
    IllegalExecutionState,
    Svc64,
    Hvc64,
    Smc64,
    MsrMrsSystem,
    SveAccess,
    PointerAuth,
    InstructionAbortLowerEl,
    InstructionAbortSameEl,
    PcAlignment,
    DataAbortLowerEl,
    DataAbortSameEl,
    SpAlignment,
    FpException64,
    SError,
    BreakpointLowerEl,
    BreakpointSameEl,
    SoftwareStepLowerEl,
    SoftwareStepSameEl,
    WatchpointLowerEl,
    WatchpointSameEl,
    Brk64,
    Other(u8),
}

impl ExceptionClass {
    pub fn from_ec(ec: u8) -> Self {
        use ExceptionClass::*;
        match ec {
            0x00 => Unknown,
            0x01 => WfiWfe,
            0x07 => FpSimdAccess,
            0x0e => IllegalExecutionState,
            0x15 => Svc64,
            0x16 => Hvc64,
            0x17 => Smc64,
            0x18 => MsrMrsSystem,
            0x19 => SveAccess,
            0x1c => PointerAuth,
            0x20 => InstructionAbortLowerEl,
            0x21 => InstructionAbortSameEl,
            0x22 => PcAlignment,
            0x24 => DataAbortLowerEl,
            0x25 => DataAbortSameEl,
            0x26 => SpAlignment,
            0x2c => FpException64,
            0x2f => SError,
            0x30 => BreakpointLowerEl,
            0x31 => BreakpointSameEl,
            0x32 => SoftwareStepLowerEl,
            0x33 => SoftwareStepSameEl,
            0x34 => WatchpointLowerEl,
            0x35 => WatchpointSameEl,
            0x3c => Brk64,
            other => Other(other),
        }
    }

    pub fn is_abort(self) -> bool {
        matches!(
            self,
            Self::DataAbortLowerEl
                | Self::DataAbortSameEl
                | Self::InstructionAbortLowerEl
                | Self::InstructionAbortSameEl
        )
    }

    pub fn is_data_abort(self) -> bool {
        matches!(self, Self::DataAbortLowerEl | Self::DataAbortSameEl)
    }
}

/// Fault status (DFSC/IFSC, ISS bits 5:0) of an abort. The level is the
/// translation level the fault was reported at (-1 only with LPA2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultStatus {
    AddressSize(i8),
    Translation(i8),
    AccessFlag(i8),
    Permission(i8),
    SyncExternal,
    SyncExternalOnWalk(i8),
    SyncParity,
    Alignment,
    TlbConflict,
    UnsupportedAtomic,
    Other(u8),
}

impl FaultStatus {
    pub fn from_fsc(fsc: u8) -> Self {
        use FaultStatus::*;
        let lvl = (fsc & 3) as i8;
        match fsc {
            0x00..=0x03 => AddressSize(lvl),
            0x29 => AddressSize(-1),
            0x04..=0x07 => Translation(lvl),
            0x2b => Translation(-1),
            0x08..=0x0b => AccessFlag(lvl),
            0x0c..=0x0f => Permission(lvl),
            0x10 => SyncExternal,
            0x14..=0x17 => SyncExternalOnWalk(lvl),
            0x13 => SyncExternalOnWalk(-1),
            0x18 => SyncParity,
            0x21 => Alignment,
            0x30 => TlbConflict,
            0x31 => UnsupportedAtomic,
            other => Other(other),
        }
    }

    /// The translation level, for the kinds that report one.
    pub fn level(self) -> Option<i8> {
        use FaultStatus::*;
        match self {
            AddressSize(l) | Translation(l) | AccessFlag(l) | Permission(l) | SyncExternalOnWalk(l) => Some(l),
            _ => None,
        }
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FaultStatus::*;
        match *self {
            AddressSize(l) => write!(f, "address size fault, level {l}"),
            Translation(l) => write!(f, "translation fault, level {l}"),
            AccessFlag(l) => write!(f, "access flag fault, level {l}"),
            Permission(l) => write!(f, "permission fault, level {l}"),
            SyncExternal => write!(f, "synchronous external abort"),
            SyncExternalOnWalk(l) => write!(f, "synchronous external abort on table walk, level {l}"),
            SyncParity => write!(f, "synchronous parity/ECC error"),
            Alignment => write!(f, "alignment fault"),
            TlbConflict => write!(f, "TLB conflict abort"),
            UnsupportedAtomic => write!(f, "unsupported atomic hardware update"),
            Other(c) => write!(f, "fault status {c:#04x}"),
        }
    }
}

/// A decoded ESR_ELx value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    pub fn ec(self) -> ExceptionClass {
        ExceptionClass::from_ec(((self.0 >> 26) & 0x3f) as u8)
    }
    pub fn raw_ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }
    /// Instruction length: true for a 32-bit instruction.
    pub fn il(self) -> bool {
        self.0 & (1 << 25) != 0
    }
    pub fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }
    /// For aborts: the fault status code.
    pub fn fault_status(self) -> Option<FaultStatus> {
        self.ec().is_abort().then(|| FaultStatus::from_fsc((self.0 & 0x3f) as u8))
    }
    /// Data abort: write not read (WnR, bit 6). Cache maintenance reports as write.
    pub fn wnr(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    /// Fault on a stage-2 walk for a stage-1 table access (S1PTW, bit 7).
    pub fn s1ptw(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Cache maintenance operation (CM, bit 8).
    pub fn cm(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// External abort type (EA, bit 9).
    pub fn ea(self) -> bool {
        self.0 & (1 << 9) != 0
    }
    /// FAR not valid (FnV, bit 10).
    pub fn fnv(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// Instruction syndrome valid (ISV, bit 24) for data aborts.
    pub fn isv(self) -> bool {
        self.0 & (1 << 24) != 0
    }
    /// Syndrome access size in bytes, when ISV is set.
    pub fn access_size(self) -> Option<u32> {
        self.isv().then(|| 1 << ((self.0 >> 22) & 3))
    }
    /// Syndrome register transfer (SRT), when ISV is set.
    pub fn srt(self) -> Option<u32> {
        self.isv().then_some(((self.0 >> 16) & 0x1f) as u32)
    }
    /// SVC/HVC/SMC immediate.
    pub fn imm16(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl fmt::Display for Esr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ESR {:#010x}: EC {:#04x} {:?}", self.0, self.raw_ec(), self.ec())?;
        if let Some(fs) = self.fault_status() {
            write!(f, ", {fs}")?;
            if self.ec().is_data_abort() {
                write!(f, ", {}", if self.wnr() { "write (WnR=1)" } else { "read (WnR=0)" })?;
                if self.cm() {
                    write!(f, ", CM")?;
                }
                if let (Some(sz), Some(srt)) = (self.access_size(), self.srt()) {
                    write!(f, ", {sz}-byte access via x{srt}")?;
                }
            }
            if self.s1ptw() {
                write!(f, ", S1PTW")?;
            }
            if self.ea() {
                write!(f, ", EA")?;
            }
            if self.fnv() {
                write!(f, ", FnV (FAR not valid)")?;
            }
        } else if matches!(
            self.ec(),
            ExceptionClass::Svc64 | ExceptionClass::Hvc64 | ExceptionClass::Smc64 | ExceptionClass::Brk64
        ) {
            write!(f, ", imm {:#x}", self.imm16())?;
        } else {
            write!(f, ", ISS {:#x}", self.iss())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn decodes_el1_write_permission_fault_level3() {
        // EC=0x25 (DA same EL), IL=1, ISV=0, WnR=1, DFSC=0x0f (permission, level 3)
        let esr = Esr((0x25 << 26) | (1 << 25) | (1 << 6) | 0x0f);
        assert_eq!(esr.ec(), ExceptionClass::DataAbortSameEl);
        assert_eq!(esr.fault_status(), Some(FaultStatus::Permission(3)));
        assert!(esr.wnr());
        let s = esr.to_string();
        assert!(s.contains("permission fault, level 3"), "{s}");
        assert!(s.contains("WnR=1"), "{s}");
    }

    #[test]
    fn decodes_translation_fault_levels_including_lpa2() {
        for l in 0..4u8 {
            assert_eq!(FaultStatus::from_fsc(0x04 + l), FaultStatus::Translation(l as i8));
            assert_eq!(FaultStatus::from_fsc(0x04 + l).level(), Some(l as i8));
        }
        assert_eq!(FaultStatus::from_fsc(0x2b), FaultStatus::Translation(-1));
        assert_eq!(FaultStatus::from_fsc(0x0a), FaultStatus::AccessFlag(2));
        assert_eq!(FaultStatus::from_fsc(0x30), FaultStatus::TlbConflict);
        assert_eq!(FaultStatus::from_fsc(0x21).level(), None);
    }

    #[test]
    fn decodes_el0_instruction_abort_and_svc() {
        let ia = Esr((0x20 << 26) | (1 << 25) | 0x0e);
        assert_eq!(ia.ec(), ExceptionClass::InstructionAbortLowerEl);
        assert_eq!(ia.fault_status(), Some(FaultStatus::Permission(2)));
        let svc = Esr((0x15 << 26) | (1 << 25) | 0x42);
        assert_eq!(svc.ec(), ExceptionClass::Svc64);
        assert_eq!(svc.fault_status(), None);
        assert!(svc.to_string().contains("imm 0x42"));
    }

    #[test]
    fn data_abort_syndrome_fields() {
        // ISV=1, SAS=3 (8 bytes), SRT=5, S1PTW, FnV
        let esr = Esr((0x24 << 26) | (1 << 24) | (3 << 22) | (5 << 16) | (1 << 10) | (1 << 7) | 0x05);
        assert_eq!(esr.access_size(), Some(8));
        assert_eq!(esr.srt(), Some(5));
        assert!(esr.s1ptw() && esr.fnv() && !esr.wnr());
        assert_eq!(esr.fault_status(), Some(FaultStatus::Translation(1)));
        let s = esr.to_string();
        assert!(s.contains("8-byte access via x5") && s.contains("S1PTW") && s.contains("FnV"), "{s}");
    }

    #[test]
    fn unknown_classes_are_kept() {
        assert_eq!(ExceptionClass::from_ec(0x3f), ExceptionClass::Other(0x3f));
        assert_eq!(FaultStatus::from_fsc(0x3e), FaultStatus::Other(0x3e));
    }
}
