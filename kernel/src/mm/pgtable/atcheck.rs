//! The `AT` cross-check: what the MMU says about one access (PAR_EL1 after
//! `AT S1E{0,1}{R,W}`) against two oracles.
//!
//! 1. **The walker** ([`expected_access`] over [`Tables::translate_with_limits`]):
//!    the PA, or the fault kind and level, exactly. Both sides read the same
//!    descriptor bits, so this checks the walker's model of the MMU, not the
//!    encoder: an AP bit written wrong would agree with itself.
//! 2. **The request**: what the caller asked the tables to say, by name
//!    ([`Request`]), never decoded from the tables. This is what catches an
//!    encoder that writes the wrong bits. It compares the outcome kind and
//!    PA, the memory type (PAR_EL1.ATTR against the MAIR byte the requested
//!    type stands for) and the shareability (PAR_EL1.SH), and, since `AT`
//!    cannot tell, the walker's execute permissions ([`expected_exec`]).
//!
//! [`Tables::translate_with_limits`]: super::Tables::translate_with_limits

use super::{Expected, HwUpdates, Translation, expected_access, expected_exec};
use crate::arch::aarch64::esr::FaultStatus;
use crate::mm::addr::{PhysAddr, VirtAddr};
use crate::mm::desc::{LeafAttrs, MemType, TableAttrs};

/// One access `AT` can check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub el0: bool,
    pub write: bool,
}

impl Access {
    /// The four accesses, in the order of `AT S1E1R, S1E1W, S1E0R, S1E0W`.
    pub const ALL: [Access; 4] = [
        Access { el0: false, write: false },
        Access { el0: false, write: true },
        Access { el0: true, write: false },
        Access { el0: true, write: true },
    ];
    /// What EL0 does: read and write.
    pub const EL0: [Access; 2] = [Access { el0: true, write: false }, Access { el0: true, write: true }];
}

impl core::fmt::Display for Access {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "S1E{}{}", self.el0 as u8 ^ 1, if self.write { 'W' } else { 'R' })
    }
}

/// What PAR_EL1 said after one `AT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Par {
    pub outcome: Expected,
    /// PAR_EL1.ATTR: the MAIR attribute byte of the memory type (on success).
    pub attr: u8,
    /// PAR_EL1.SH (on success).
    pub sh: u8,
}

impl Par {
    /// Decodes PAR_EL1 after an `AT` of `va` (Arm ARM D19, PAR_EL1: bit 0
    /// F; on success PA[47:12], SH[8:7], ATTR[63:56]; on a fault FST[6:1]).
    pub fn decode(par: u64, va: VirtAddr) -> Par {
        if par & 1 == 0 {
            let pa = (par & 0x0000_ffff_ffff_f000) | va.offset_in(0x1000);
            return Par {
                outcome: Expected::Ok(PhysAddr::new(pa)),
                attr: (par >> 56) as u8,
                sh: ((par >> 7) & 3) as u8,
            };
        }
        let fst = ((par >> 1) & 0x3f) as u8;
        let outcome = match FaultStatus::from_fsc(fst) {
            FaultStatus::Translation(l) if l >= 0 => Expected::Translation(l as u32),
            FaultStatus::AccessFlag(l) if l >= 0 => Expected::AccessFlag(l as u32),
            FaultStatus::Permission(l) if l >= 0 => Expected::Permission(l as u32),
            _ => Expected::Other(fst),
        };
        Par { outcome, attr: 0, sh: 0 }
    }
}

/// What the owner of a mapping asked for at one VA: a second oracle that
/// shares nothing with the descriptor encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Nothing is mapped here.
    Unmapped,
    /// Exactly this (tables built by tests): the PA the VA must reach, the
    /// leaf's attributes and the limits requested for the tables above it.
    Exact { pa: PhysAddr, attrs: LeafAttrs, limits: TableAttrs },
    /// A user mapping (VMA) with these permissions: its entries may allow
    /// less (not yet faulted, copy-on-write, access flag clear) but never
    /// more, a present entry of a readable mapping is readable, and the
    /// memory type is exact.
    Vma { read: bool, write: bool, exec: bool, mem: MemType },
}

/// A disagreement, with what each side said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The walker's model and the MMU differ.
    Walker { access: Access, walker: Expected, at: Expected },
    /// The MMU allows or refuses what the request says it must not.
    Request { access: Access, requested: Verdict, at: Expected },
    /// PAR_EL1.ATTR is not the requested memory type's MAIR byte.
    MemoryType { access: Access, requested: u8, at: u8 },
    /// PAR_EL1.SH is not the requested shareability.
    Shareability { access: Access, requested: u8, at: u8 },
    /// The walker's execute permissions `(EL1, EL0)` are not the requested ones.
    Exec { requested: (bool, bool), walker: (bool, bool) },
}

impl core::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Mismatch::Walker { access, walker, at } => write!(f, "AT {access}: walker expects {walker}, AT says {at}"),
            Mismatch::Request { access, requested, at } => {
                write!(f, "AT {access}: the mapping asks for {requested}, AT says {at}")
            }
            Mismatch::MemoryType { access, requested, at } => {
                write!(f, "AT {access}: requested memory attributes {requested:#04x}, PAR_EL1.ATTR {at:#04x}")
            }
            Mismatch::Shareability { access, requested, at } => {
                write!(f, "AT {access}: requested shareability {requested:#04b}, PAR_EL1.SH {at:#04b}")
            }
            Mismatch::Exec { requested, walker } => {
                write!(f, "execute (EL1, EL0): requested {requested:?}, the tables say {walker:?} (AT cannot tell)")
            }
        }
    }
}

/// What the request says of one access: a definite outcome (without the
/// fault level, which only the tables know), or for user mappings a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok(PhysAddr),
    Translation,
    AccessFlag,
    Permission,
    /// The access may fault, but if it succeeds it must not be refused by
    /// the mapping's permissions.
    MayFault,
    /// The access must not succeed (any fault).
    Refused,
}

impl core::fmt::Display for Verdict {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Verdict::Ok(pa) => write!(f, "PA {:#x}", pa.as_u64()),
            Verdict::Translation => write!(f, "a translation fault"),
            Verdict::AccessFlag => write!(f, "an access flag fault"),
            Verdict::Permission => write!(f, "a permission fault"),
            Verdict::MayFault => write!(f, "anything"),
            Verdict::Refused => write!(f, "a fault"),
        }
    }
}

impl Request {
    /// What a user mapping asks for: its VMA's permissions (none: nothing
    /// may be mapped). pagelab maps all user memory as Normal write-back
    /// memory (`vm_page_prot`).
    pub fn for_vma(vma: Option<&crate::mm::mm_struct::Vma>) -> Request {
        use crate::mm::mm_struct::VmFlags;
        match vma {
            None => Request::Unmapped,
            Some(v) => Request::Vma {
                read: v.flags.contains(VmFlags::READ),
                write: v.flags.contains(VmFlags::WRITE),
                exec: v.flags.contains(VmFlags::EXEC),
                mem: MemType::Normal,
            },
        }
    }

    /// The verdict for `access`; `walked` is the walker's translation, for
    /// requests that do not name a PA.
    pub fn verdict(&self, access: Access, hw: HwUpdates, walked: &Translation) -> Verdict {
        match *self {
            Request::Unmapped => Verdict::Translation,
            Request::Exact { pa, attrs, limits } => {
                if !attrs.af && !hw.af {
                    return Verdict::AccessFlag;
                }
                let el0 = attrs.el0 && !limits.no_el0;
                let write = attrs.writable && !limits.read_only;
                if (!access.el0 || el0) && (!access.write || write) { Verdict::Ok(pa) } else { Verdict::Permission }
            }
            Request::Vma { read, write, .. } => {
                let permitted = if access.write { write } else { read };
                if !permitted {
                    return Verdict::Refused;
                }
                // A present, young entry of a readable mapping must be readable.
                match *walked {
                    Translation::Mapped { pa, desc, .. } if !access.write && (desc.af() || hw.af) => Verdict::Ok(pa),
                    _ => Verdict::MayFault,
                }
            }
        }
    }

    /// The execute permissions `(EL1, EL0)` requested, as
    /// [`expected_exec`] computes them from the tables.
    fn exec(&self) -> Option<(bool, bool)> {
        match *self {
            Request::Unmapped => None,
            Request::Exact { attrs, limits, .. } => {
                let el0_writable = attrs.el0 && attrs.writable && !limits.no_el0 && !limits.read_only;
                Some((attrs.kexec && !limits.pxn && !el0_writable, attrs.uexec && !limits.uxn))
            }
            Request::Vma { exec, .. } => Some((false, exec)),
        }
    }

    fn mem(&self) -> Option<MemType> {
        match *self {
            Request::Unmapped => None,
            Request::Exact { attrs, .. } => Some(attrs.mem),
            Request::Vma { mem, .. } => Some(mem),
        }
    }
}

fn verdict_matches(v: Verdict, at: Expected) -> bool {
    match (v, at) {
        (Verdict::Ok(a), Expected::Ok(b)) => a == b,
        (Verdict::Translation, Expected::Translation(_))
        | (Verdict::AccessFlag, Expected::AccessFlag(_))
        | (Verdict::Permission, Expected::Permission(_))
        | (Verdict::MayFault, _) => true,
        (Verdict::Refused, e) => !matches!(e, Expected::Ok(_)),
        _ => false,
    }
}

/// Checks one `AT` result against the walker and the request. `walked` is
/// the walker's translation of the VA with its table limits.
pub fn check(
    walked: &(Translation, TableAttrs),
    req: &Request,
    access: Access,
    hw: HwUpdates,
    par: Par,
) -> Result<(), Mismatch> {
    let (tr, limits) = walked;
    let walker = expected_access(tr, *limits, access.el0, access.write, hw);
    if walker != par.outcome {
        return Err(Mismatch::Walker { access, walker, at: par.outcome });
    }
    let requested = req.verdict(access, hw, tr);
    if !verdict_matches(requested, par.outcome) {
        return Err(Mismatch::Request { access, requested, at: par.outcome });
    }
    if let (Expected::Ok(_), Some(mem)) = (par.outcome, req.mem()) {
        if par.attr != mem.mair_attr() {
            return Err(Mismatch::MemoryType { access, requested: mem.mair_attr(), at: par.attr });
        }
        if par.sh != mem.par_shareability() {
            return Err(Mismatch::Shareability { access, requested: mem.par_shareability(), at: par.sh });
        }
    }
    Ok(())
}

/// Checks what `AT` cannot see: the walker's execute permissions against the
/// request, for a VA the walker found mapped.
pub fn check_exec(walked: &(Translation, TableAttrs), req: &Request) -> Result<(), Mismatch> {
    let (tr, limits) = walked;
    if !matches!(tr, Translation::Mapped { .. }) {
        return Ok(());
    }
    let walker = expected_exec(tr, *limits);
    match req.exec() {
        Some(requested) if requested != walker => Err(Mismatch::Exec { requested, walker }),
        _ => Ok(()),
    }
}

/// Runs `AT` for `access` on `va` on this CPU (the tables to check must be
/// live in TTBR0 or TTBR1) and decodes PAR_EL1.
#[cfg(target_os = "none")]
pub fn observe(access: Access, va: VirtAddr) -> Par {
    use crate::arch::aarch64::cpu::{AtOp, at_par};
    let op = match (access.el0, access.write) {
        (false, false) => AtOp::S1E1R,
        (false, true) => AtOp::S1E1W,
        (true, false) => AtOp::S1E0R,
        (true, true) => AtOp::S1E0W,
    };
    Par::decode(at_par(op, va.as_u64()), va)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::desc::Desc;

    const HW_OFF: HwUpdates = HwUpdates { af: false, dirty: false };
    const R0: Access = Access { el0: true, write: false };
    const W0: Access = Access { el0: true, write: true };
    const W1: Access = Access { el0: false, write: true };

    fn ok_par(pa: u64, attr: u8, sh: u8) -> u64 {
        pa | ((attr as u64) << 56) | ((sh as u64) << 7)
    }

    #[test]
    fn par_decoding() {
        let p = Par::decode(ok_par(0x4123_4000, 0xff, 3) | (1 << 11), VirtAddr::new(0xffff_0000_0000_0abc));
        assert_eq!(p, Par { outcome: Expected::Ok(PhysAddr::new(0x4123_4abc)), attr: 0xff, sh: 3 });
        // F=1, FST = permission fault level 3 (0x0f).
        assert_eq!(Par::decode((0x0f << 1) | 1, VirtAddr::new(0)).outcome, Expected::Permission(3));
        assert_eq!(Par::decode((0x09 << 1) | 1, VirtAddr::new(0)).outcome, Expected::AccessFlag(1));
        assert_eq!(Par::decode((0x04 << 1) | 1, VirtAddr::new(0)).outcome, Expected::Translation(0));
        assert_eq!(Par::decode((0x21 << 1) | 1, VirtAddr::new(0)).outcome, Expected::Other(0x21), "never predicted");
    }

    fn mapped(pa: u64, attrs: LeafAttrs) -> Translation {
        Translation::Mapped { pa: PhysAddr::new(pa), level: 3, desc: Desc::leaf(PhysAddr::new(pa), 3, attrs) }
    }

    const USER_RO: LeafAttrs = LeafAttrs { el0: true, writable: false, ng: true, ..LeafAttrs::KERNEL_RW };

    #[test]
    fn an_encoder_that_writes_the_wrong_ap_is_caught_by_the_request_only() {
        let asked = LeafAttrs { writable: true, ..USER_RO };
        // The encoder wrote read-only; the MMU (and the walker) say so.
        let tr = mapped(0x8000, USER_RO);
        let walked = (tr, TableAttrs::NONE);
        let at = Par { outcome: Expected::Permission(3), attr: 0, sh: 0 };
        let req = Request::Exact { pa: PhysAddr::new(0x8000), attrs: asked, limits: TableAttrs::NONE };
        let e = check(&walked, &req, W0, HW_OFF, at);
        assert_eq!(
            e,
            Err(Mismatch::Request { access: W0, requested: Verdict::Ok(PhysAddr::new(0x8000)), at: at.outcome })
        );
        let right = Request::Exact { pa: PhysAddr::new(0x8000), attrs: USER_RO, limits: TableAttrs::NONE };
        assert_eq!(check(&walked, &right, W0, HW_OFF, at), Ok(()));
    }

    #[test]
    fn memory_type_and_shareability_come_from_par() {
        let dev = LeafAttrs { mem: MemType::DeviceNGnRE, ..USER_RO };
        let tr = mapped(0x9000, dev);
        let req = Request::Exact { pa: PhysAddr::new(0x9000), attrs: dev, limits: TableAttrs::NONE };
        let ok = Par { outcome: Expected::Ok(PhysAddr::new(0x9000)), attr: 0x04, sh: 0b10 };
        assert_eq!(check(&(tr, TableAttrs::NONE), &req, R0, HW_OFF, ok), Ok(()));
        let normal = Par { attr: 0xff, sh: 0b11, ..ok };
        assert_eq!(
            check(&(tr, TableAttrs::NONE), &req, R0, HW_OFF, normal),
            Err(Mismatch::MemoryType { access: R0, requested: 0x04, at: 0xff })
        );
        let inner = Par { sh: 0b11, ..ok };
        assert_eq!(
            check(&(tr, TableAttrs::NONE), &req, R0, HW_OFF, inner),
            Err(Mismatch::Shareability { access: R0, requested: 0b10, at: 0b11 })
        );
    }

    #[test]
    fn table_limits_reach_both_oracles() {
        let rw = LeafAttrs { writable: true, ..USER_RO };
        let tr = mapped(0xa000, rw);
        let lim = TableAttrs { read_only: true, ..TableAttrs::NONE };
        let req = Request::Exact { pa: PhysAddr::new(0xa000), attrs: rw, limits: lim };
        let denied = Par { outcome: Expected::Permission(3), attr: 0, sh: 0 };
        assert_eq!(check(&(tr, lim), &req, W1, HW_OFF, denied), Ok(()));
        // A walker that forgot the table's limits disagrees with the MMU.
        assert!(matches!(check(&(tr, TableAttrs::NONE), &req, W1, HW_OFF, denied), Err(Mismatch::Walker { .. })));
    }

    #[test]
    fn user_mappings_may_allow_less_but_never_more() {
        let vma_ro = Request::Vma { read: true, write: false, exec: false, mem: MemType::Normal };
        let vma_rw = Request::Vma { read: true, write: true, exec: false, mem: MemType::Normal };
        let cow = mapped(0xb000, USER_RO);
        let walked = (cow, TableAttrs::NONE);
        let denied = Par { outcome: Expected::Permission(3), attr: 0, sh: 0 };
        let read_ok = Par { outcome: Expected::Ok(PhysAddr::new(0xb000)), attr: 0xff, sh: 3 };
        // A copy-on-write page: read-only in a writable mapping is fine.
        assert_eq!(check(&walked, &vma_rw, W0, HW_OFF, denied), Ok(()));
        assert_eq!(check(&walked, &vma_rw, R0, HW_OFF, read_ok), Ok(()));
        // Writable in a read-only mapping is not, even when walker and MMU agree.
        let writable = mapped(0xb000, LeafAttrs { writable: true, ..USER_RO });
        let w_ok = Par { outcome: Expected::Ok(PhysAddr::new(0xb000)), attr: 0xff, sh: 3 };
        assert!(matches!(
            check(&(writable, TableAttrs::NONE), &vma_ro, W0, HW_OFF, w_ok),
            Err(Mismatch::Request { requested: Verdict::Refused, .. })
        ));
        // A present page of a readable mapping that EL0 cannot read.
        let kernel_only = mapped(0xb000, LeafAttrs { el0: false, ..USER_RO });
        assert!(matches!(
            check(&(kernel_only, TableAttrs::NONE), &vma_ro, R0, HW_OFF, denied),
            Err(Mismatch::Request { requested: Verdict::Ok(_), .. })
        ));
        // Mapped where nothing should be.
        assert!(matches!(
            check(&walked, &Request::Unmapped, R0, HW_OFF, read_ok),
            Err(Mismatch::Request { requested: Verdict::Translation, .. })
        ));
    }

    #[test]
    fn exec_against_the_request() {
        let ux = LeafAttrs { uexec: true, ..USER_RO };
        let vma_x = Request::Vma { read: true, write: false, exec: true, mem: MemType::Normal };
        assert_eq!(check_exec(&(mapped(0xc000, ux), TableAttrs::NONE), &vma_x), Ok(()));
        assert_eq!(
            check_exec(&(mapped(0xc000, USER_RO), TableAttrs::NONE), &vma_x),
            Err(Mismatch::Exec { requested: (false, true), walker: (false, false) })
        );
        let uxn_table = TableAttrs { uxn: true, ..TableAttrs::NONE };
        let req = Request::Exact { pa: PhysAddr::new(0xc000), attrs: ux, limits: uxn_table };
        assert_eq!(check_exec(&(mapped(0xc000, ux), uxn_table), &req), Ok(()));
        assert!(check_exec(&(mapped(0xc000, ux), TableAttrs::NONE), &req).is_err(), "UXNTable not applied");
    }
}
