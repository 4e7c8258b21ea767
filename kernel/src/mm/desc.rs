//! Stage-1 translation table descriptors as values.
//!
//! A descriptor is a `u64` read from or written to a live table atomically
//! ([`crate::mm::pgtable`]); this module only encodes and decodes values, so
//! nothing ever holds a `&mut` into a table the MMU (or hardware AF/DBM
//! updates) may be using.
//!
//! Software bits are allocated up front (Linux arm64 uses the same 55-58 range):
//! - 55 `SW_DIRTY`   software dirty (with DBM/`PTE_WRITE` semantics later)
//! - 56 `SW_SPECIAL` special mapping: no struct-page semantics (PFNMAP, zero page)
//! - 57 `SW_UFFD_WP` userfaultfd write-protect on a present entry
//! - 58 `SW_ANON_EXCL_HINT` reserved (kept free for a later use)
//!
//! Non-present ("invalid" to the MMU, bit 0 = 0) entries that are not zero carry
//! a software encoding in bits 3:1 so that swap, migration and markers fit:
//! see [`NonPresent`].

use tock_registers::LocalRegisterCopy;
use tock_registers::register_bitfields;

use super::addr::PhysAddr;
use crate::arch::aarch64::granule::Granule;

register_bitfields! {u64,
    pub STAGE1 [
        VALID OFFSET(0) NUMBITS(1) [],
        /// Table (levels 0-2) / page (level 3) when set; block when clear.
        TYPE OFFSET(1) NUMBITS(1) [Block = 0, TableOrPage = 1],
        ATTR_INDX OFFSET(2) NUMBITS(3) [],
        NS OFFSET(5) NUMBITS(1) [],
        /// AP[2:1]: bit 6 = EL0 access, bit 7 = read-only.
        AP OFFSET(6) NUMBITS(2) [RwEl1 = 0, RwEl1El0 = 1, RoEl1 = 2, RoEl1El0 = 3],
        SH OFFSET(8) NUMBITS(2) [Non = 0, Outer = 2, Inner = 3],
        AF OFFSET(10) NUMBITS(1) [],
        NG OFFSET(11) NUMBITS(1) [],
        DBM OFFSET(51) NUMBITS(1) [],
        CONT OFFSET(52) NUMBITS(1) [],
        PXN OFFSET(53) NUMBITS(1) [],
        UXN OFFSET(54) NUMBITS(1) [],
        SW_DIRTY OFFSET(55) NUMBITS(1) [],
        SW_SPECIAL OFFSET(56) NUMBITS(1) [],
        SW_UFFD_WP OFFSET(57) NUMBITS(1) [],
        SW_RESERVED OFFSET(58) NUMBITS(1) [],
        /// Table descriptor attributes (hierarchical permissions).
        PXN_TABLE OFFSET(59) NUMBITS(1) [],
        UXN_TABLE OFFSET(60) NUMBITS(1) [],
        AP_TABLE OFFSET(61) NUMBITS(2) [],
        NS_TABLE OFFSET(63) NUMBITS(1) []
    ]
}

/// Output-address bits of a descriptor (48-bit PA).
pub const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

/// A raw descriptor value.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Desc(pub u64);

impl core::fmt::Debug for Desc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Desc({:#018x})", self.0)
    }
}

/// What a descriptor is, at a given level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// All zero: nothing there (`pte_none`).
    None,
    /// Invalid to the MMU but carrying a software encoding.
    NonPresent(NonPresent),
    /// Points to the next-level table.
    Table(PhysAddr),
    /// A block (levels 1-2) or page (level 3) mapping of `PhysAddr`.
    Leaf(PhysAddr),
    /// Valid bit set but an encoding the MMU treats as a fault
    /// (a "block" at level 3, or a block where the granule forbids one).
    Reserved,
}

/// A swap entry's device and slot (Linux `swp_entry_t`: `swp_type`, `swp_offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SwpEntry {
    pub type_: u8,
    pub offset: u64,
}

/// The three migration entry kinds (Linux `SWP_MIGRATION_READ`,
/// `SWP_MIGRATION_READ_EXCLUSIVE`, `SWP_MIGRATION_WRITE`): what the entry
/// becomes again when the move is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationKind {
    /// Read-only, maybe shared.
    Read,
    /// Read-only and PageAnonExclusive.
    ReadExclusive,
    /// Writable (hence exclusive for anonymous memory).
    Write,
}

/// Software encodings of non-present entries (bit 0 clear, value non-zero).
///
/// Bits 3:1 hold the kind, bits 11:4 its flags, the payload starts at bit 12
/// (Linux arm64 keeps the same state in its swap PTE format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonPresent {
    /// A swapped-out page: its swap entry, with `pte_swp_exclusive` and
    /// `pte_swp_uffd_wp`.
    Swap { entry: SwpEntry, exclusive: bool, uffd_wp: bool },
    /// A migration entry naming the frame being moved, with the state the
    /// entry gets back (Linux keeps dirty and young in the entry's offset bits).
    Migration { pa: PhysAddr, kind: MigrationKind, dirty: bool, young: bool, uffd_wp: bool },
    /// A PTE marker (Linux `pte_marker`): bits of [`marker`].
    Marker(u64),
    /// Present but inaccessible (PROT_NONE): the frame is still mapped for the kernel.
    ProtNone { pfn: u64 },
    /// An encoding this build does not know.
    Unknown(u64),
}

/// PTE marker bits (Linux `PTE_MARKER_*`).
pub mod marker {
    pub const UFFD_WP: u64 = 1 << 0;
    pub const POISONED: u64 = 1 << 1;
    pub const GUARD: u64 = 1 << 2;
}

const NP_KIND_SHIFT: u32 = 1;
const NP_SWAP: u64 = 1;
const NP_MIGRATION: u64 = 2;
const NP_MARKER: u64 = 3;
const NP_PROT_NONE: u64 = 4;
const NP_EXCLUSIVE: u64 = 1 << 4;
const NP_UFFD_WP: u64 = 1 << 5;
/// Migration: the kind, 2 bits.
const NP_MIG_KIND_SHIFT: u32 = 6;
const NP_DIRTY: u64 = 1 << 8;
const NP_YOUNG: u64 = 1 << 9;
/// Swap: the device type, 5 bits (Linux `MAX_SWAPFILES_SHIFT`).
const NP_SWP_TYPE_SHIFT: u32 = 6;
pub const MAX_SWAPFILES: u8 = 32;
const NP_PAYLOAD_SHIFT: u32 = 12;
/// Largest swap offset the encoding holds (payload bits 62:12; bit 63 stays clear).
pub const MAX_SWAP_OFFSET: u64 = (1 << (63 - NP_PAYLOAD_SHIFT)) - 1;

impl NonPresent {
    pub fn encode(self) -> Desc {
        let flag = |b: bool, bit: u64| if b { bit } else { 0 };
        let v = match self {
            NonPresent::Swap { entry, exclusive, uffd_wp } => {
                debug_assert!(entry.type_ < MAX_SWAPFILES && entry.offset <= MAX_SWAP_OFFSET);
                (NP_SWAP << NP_KIND_SHIFT)
                    | ((entry.type_ as u64) << NP_SWP_TYPE_SHIFT)
                    | (entry.offset << NP_PAYLOAD_SHIFT)
                    | flag(exclusive, NP_EXCLUSIVE)
                    | flag(uffd_wp, NP_UFFD_WP)
            }
            NonPresent::Migration { pa, kind, dirty, young, uffd_wp } => {
                let k = match kind {
                    MigrationKind::Read => 0,
                    MigrationKind::ReadExclusive => 1,
                    MigrationKind::Write => 2,
                };
                (NP_MIGRATION << NP_KIND_SHIFT)
                    | (pa.as_u64() & OA_MASK)
                    | (k << NP_MIG_KIND_SHIFT)
                    | flag(dirty, NP_DIRTY)
                    | flag(young, NP_YOUNG)
                    | flag(uffd_wp, NP_UFFD_WP)
            }
            NonPresent::Marker(bits) => (NP_MARKER << NP_KIND_SHIFT) | (bits << NP_PAYLOAD_SHIFT),
            NonPresent::ProtNone { pfn } => (NP_PROT_NONE << NP_KIND_SHIFT) | (pfn << NP_PAYLOAD_SHIFT),
            NonPresent::Unknown(v) => v & !1,
        };
        Desc(v)
    }

    fn decode(v: u64) -> Self {
        let payload = v >> NP_PAYLOAD_SHIFT;
        match (v >> NP_KIND_SHIFT) & 7 {
            NP_SWAP => NonPresent::Swap {
                entry: SwpEntry { type_: ((v >> NP_SWP_TYPE_SHIFT) & 0x1f) as u8, offset: payload },
                exclusive: v & NP_EXCLUSIVE != 0,
                uffd_wp: v & NP_UFFD_WP != 0,
            },
            NP_MIGRATION => {
                let kind = match (v >> NP_MIG_KIND_SHIFT) & 3 {
                    0 => MigrationKind::Read,
                    1 => MigrationKind::ReadExclusive,
                    2 => MigrationKind::Write,
                    _ => return NonPresent::Unknown(v),
                };
                NonPresent::Migration {
                    pa: PhysAddr::new(v & OA_MASK),
                    kind,
                    dirty: v & NP_DIRTY != 0,
                    young: v & NP_YOUNG != 0,
                    uffd_wp: v & NP_UFFD_WP != 0,
                }
            }
            NP_MARKER => NonPresent::Marker(payload),
            NP_PROT_NONE => NonPresent::ProtNone { pfn: payload },
            _ => NonPresent::Unknown(v),
        }
    }
}

/// Access permissions of a leaf, in the terms ptdump and the fault path use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub el0: bool,
    pub read_only: bool,
    pub pxn: bool,
    pub uxn: bool,
}

impl Desc {
    pub const INVALID: Desc = Desc(0);

    fn reg(self) -> LocalRegisterCopy<u64, STAGE1::Register> {
        LocalRegisterCopy::new(self.0)
    }

    pub fn is_valid(self) -> bool {
        self.0 & 1 != 0
    }

    /// Decodes the descriptor as found at `level` for `granule`. Inlined:
    /// the fault paths call it for every level they pass.
    #[inline]
    pub fn kind(self, level: u32, granule: Granule) -> Kind {
        if self.0 == 0 {
            return Kind::None;
        }
        if !self.is_valid() {
            return Kind::NonPresent(NonPresent::decode(self.0));
        }
        let table_or_page = self.reg().is_set(STAGE1::TYPE);
        match (level, table_or_page) {
            (3, true) => Kind::Leaf(self.output_address(granule.level_size(3))),
            (3, false) => Kind::Reserved,
            (_, true) => Kind::Table(self.output_address(granule.page_size())),
            (l, false) if granule.block_allowed(l) => Kind::Leaf(self.output_address(granule.level_size(l))),
            _ => Kind::Reserved,
        }
    }

    /// The output address, aligned down to `size` (table, page or block size).
    pub fn output_address(self, size: u64) -> PhysAddr {
        PhysAddr::new(self.0 & OA_MASK & !(size - 1))
    }

    /// A table descriptor pointing at `table`.
    pub fn table(table: PhysAddr) -> Desc {
        Desc((table.as_u64() & OA_MASK) | 0b11)
    }

    /// A table descriptor pointing at `table` that limits everything below
    /// it by `limits` (hierarchical permissions).
    pub fn table_with(table: PhysAddr, limits: TableAttrs) -> Desc {
        Desc(Self::table(table).0 | limits.bits())
    }

    /// The hierarchical limits a table descriptor puts on what it points to.
    pub fn table_attrs(self) -> TableAttrs {
        let r = self.reg();
        let ap = r.read(STAGE1::AP_TABLE);
        TableAttrs {
            no_el0: ap & 1 != 0,
            read_only: ap & 2 != 0,
            uxn: r.is_set(STAGE1::UXN_TABLE),
            pxn: r.is_set(STAGE1::PXN_TABLE),
        }
    }

    /// A leaf (page at level 3, block above) for `pa` with `attrs`.
    pub fn leaf(pa: PhysAddr, level: u32, attrs: LeafAttrs) -> Desc {
        let ty = if level == 3 { 0b11 } else { 0b01 };
        Desc((pa.as_u64() & OA_MASK) | ty | attrs.bits())
    }

    pub fn attr_index(self) -> u64 {
        self.reg().read(STAGE1::ATTR_INDX)
    }
    pub fn perms(self) -> Perms {
        let r = self.reg();
        let ap = r.read(STAGE1::AP);
        Perms { el0: ap & 1 != 0, read_only: ap & 2 != 0, pxn: r.is_set(STAGE1::PXN), uxn: r.is_set(STAGE1::UXN) }
    }
    pub fn af(self) -> bool {
        self.reg().is_set(STAGE1::AF)
    }
    pub fn ng(self) -> bool {
        self.reg().is_set(STAGE1::NG)
    }
    pub fn contiguous(self) -> bool {
        self.reg().is_set(STAGE1::CONT)
    }
    pub fn shareability(self) -> u64 {
        self.reg().read(STAGE1::SH)
    }
    pub fn dbm(self) -> bool {
        self.reg().is_set(STAGE1::DBM)
    }
    pub fn special(self) -> bool {
        self.reg().is_set(STAGE1::SW_SPECIAL)
    }
    pub fn sw_dirty(self) -> bool {
        self.reg().is_set(STAGE1::SW_DIRTY)
    }
    pub fn uffd_wp(self) -> bool {
        self.reg().is_set(STAGE1::SW_UFFD_WP)
    }
    /// Attribute bits only (everything but type and output address).
    pub fn attr_bits(self) -> u64 {
        self.0 & !(OA_MASK | 0b11)
    }
    /// [`Desc::attr_bits`] without what the MMU may update in one entry of
    /// a contiguous run on its own (Linux `contpte_ptep_get` gathers these
    /// over the run): the access flag, and with DBM the dirty state (AP[2]).
    pub fn run_attr_bits(self) -> u64 {
        let hw = AF_BIT | if self.dbm() { AP_RDONLY | SW_DIRTY_BIT } else { 0 };
        self.attr_bits() & !hw
    }
    /// Linux `pte_wrprotect`: read-only, and DBM cleared so that the MMU
    /// can never make it writable again; dirtiness the hardware recorded
    /// (DBM with AP[2] clear) moves to the software dirty bit.
    pub fn wrprotect(self) -> Desc {
        // Branch-free on the fork and mprotect loops: hardware-dirty is
        // DBM (bit 51) with AP[2] (bit 7) clear; it becomes bit 55.
        let hw_dirty = (self.0 >> 51) & !(self.0 >> 7) & 1;
        Desc((self.0 | AP_RDONLY | (hw_dirty << 55)) & !DBM_BIT)
    }
    /// Linux `pte_mkwrite`. Without hardware dirty management: AP[2] clear.
    /// With it ([`hw_dbm`]): DBM (Linux `PTE_WRITE`) set, and AP[2] clear
    /// only if the entry is dirty already; a clean one stays AP[2] = 1 and
    /// the MMU clears it on the first write (no fault).
    pub fn mkwrite(self) -> Desc {
        if !hw_dbm() {
            return Desc(self.0 & !AP_RDONLY);
        }
        let d = self.0 | DBM_BIT;
        Desc(if d & SW_DIRTY_BIT != 0 { d & !AP_RDONLY } else { d })
    }
    /// Linux `pte_mkdirty`: the software dirty bit, and for an entry with
    /// DBM (writable) AP[2] clear.
    pub fn mkdirty(self) -> Desc {
        let d = self.0 | SW_DIRTY_BIT;
        Desc(if d & DBM_BIT != 0 { d & !AP_RDONLY } else { d })
    }
    /// Dirty by hardware: DBM set and AP[2] clear (Linux `pte_hw_dirty`).
    pub fn hw_dirty(self) -> bool {
        self.dbm() && !self.perms().read_only
    }
    /// Linux `pte_mkyoung` / `pte_mkold` (the access flag).
    pub fn mkyoung(self) -> Desc {
        Desc(self.0 | AF_BIT)
    }
    pub fn mkold(self) -> Desc {
        Desc(self.0 & !AF_BIT)
    }
    /// Whether EL0 may write through this leaf (Linux `pte_write` for a
    /// user entry): AP[2] clear, or DBM set, which the MMU turns into AP[2]
    /// clear on the first write when it manages dirty state.
    pub fn user_writable(self) -> bool {
        let p = self.perms();
        p.el0 && (!p.read_only || self.dbm())
    }
    /// Whether anything may write through this leaf, now or after a
    /// hardware dirty update (for the invariants: such an entry obeys the
    /// rules of writable ones).
    pub fn may_write(self) -> bool {
        !self.perms().read_only || self.dbm()
    }
}

/// What a table descriptor forbids for every entry below it (Arm ARM
/// "Hierarchical control of data access permissions": APTable, UXNTable,
/// PXNTable). Limits only ever add up on the way down a walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableAttrs {
    /// APTable[0]: no access from EL0.
    pub no_el0: bool,
    /// APTable[1]: no write access at any EL.
    pub read_only: bool,
    /// UXNTable: never executable at EL0.
    pub uxn: bool,
    /// PXNTable: never executable at EL1.
    pub pxn: bool,
}

impl TableAttrs {
    /// No limits (what the kernel's own tables use).
    pub const NONE: TableAttrs = TableAttrs { no_el0: false, read_only: false, uxn: false, pxn: false };

    /// The limits of a walk that went through `self` and then `next`.
    pub fn and_then(self, next: TableAttrs) -> TableAttrs {
        TableAttrs {
            no_el0: self.no_el0 || next.no_el0,
            read_only: self.read_only || next.read_only,
            uxn: self.uxn || next.uxn,
            pxn: self.pxn || next.pxn,
        }
    }

    pub fn bits(self) -> u64 {
        let mut r: LocalRegisterCopy<u64, STAGE1::Register> = LocalRegisterCopy::new(0);
        r.modify(STAGE1::AP_TABLE.val(self.no_el0 as u64 | (self.read_only as u64) << 1));
        if self.uxn {
            r.modify(STAGE1::UXN_TABLE::SET);
        }
        if self.pxn {
            r.modify(STAGE1::PXN_TABLE::SET);
        }
        r.get()
    }
}

/// AP[2]: read-only at every EL.
pub const AP_RDONLY: u64 = 1 << 7;
/// AP[1]: EL0 access.
pub const AP_EL0: u64 = 1 << 6;
pub const SW_DIRTY_BIT: u64 = 1 << 55;
/// Dirty bit modifier (hardware dirty state, TCR_EL1.HD).
pub const DBM_BIT: u64 = 1 << 51;

/// What the MMU may write into live descriptors: [`HW_AF`] (TCR_EL1.HA) and
/// [`HW_DIRTY`] (HD, with DBM entries). One byte, so the fault paths test
/// it with one load.
static HW_UPDATES: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
const HW_AF: u8 = 1;
const HW_DIRTY: u8 = 2;

fn set_hw_bit(bit: u8, on: bool) {
    if on {
        HW_UPDATES.fetch_or(bit, core::sync::atomic::Ordering::Relaxed);
    } else {
        HW_UPDATES.fetch_and(!bit, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Hardware dirty-state management is in use (`pagelab.hw-dbm=1`: TCR_EL1.HA
/// and HD on every CPU): [`Desc::mkwrite`] then makes writable-clean entries.
pub fn hw_dbm() -> bool {
    HW_UPDATES.load(core::sync::atomic::Ordering::Relaxed) & HW_DIRTY != 0
}

/// Switches the DBM encoding of writable entries (the caller sets TCR_EL1.HD
/// on every CPU to match).
pub fn set_hw_dbm(on: bool) {
    set_hw_bit(HW_DIRTY, on);
}

/// Whether TCR_EL1.HA is recorded as on ([`set_hw_af`]).
pub fn hw_af() -> bool {
    HW_UPDATES.load(core::sync::atomic::Ordering::Relaxed) & HW_AF != 0
}

/// Records that TCR_EL1.HA is (about to be) on somewhere. Set it before
/// turning HA on and clear it after turning HA off on every CPU.
pub fn set_hw_af(on: bool) {
    set_hw_bit(HW_AF, on);
}

/// Whether the MMU may update a live descriptor itself (AF or dirty): then
/// read-modify-writes of live entries must be compare-and-swap.
#[inline(always)]
pub fn hw_updates() -> bool {
    HW_UPDATES.load(core::sync::atomic::Ordering::Relaxed) != 0
}

/// The access flag.
pub const AF_BIT: u64 = 1 << 10;
/// The contiguous bit (Arm "contpte" on level-3 entries).
pub const CONT_BIT: u64 = 1 << 52;
/// Software bit: userfaultfd write-protect on a present entry.
pub const UFFD_WP_BIT: u64 = 1 << 57;

/// Memory type of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    Normal,
    NormalNonCacheable,
    DeviceNGnRnE,
    DeviceNGnRE,
}

impl MemType {
    /// The MAIR attribute byte this type stands for, which `AT` reports in
    /// PAR_EL1.ATTR (Linux's `MT_*` encodings), independent of the index a
    /// descriptor uses to name it.
    pub const fn mair_attr(self) -> u8 {
        match self {
            MemType::Normal => 0xff,
            MemType::NormalNonCacheable => 0x44,
            MemType::DeviceNGnRnE => 0x00,
            MemType::DeviceNGnRE => 0x04,
        }
    }

    /// The shareability `AT` reports (PAR_EL1.SH) for this type when the
    /// kernel asks for Inner Shareable Normal memory: Device and
    /// Non-cacheable memory always reads as Outer Shareable (0b10), cacheable
    /// Normal memory as Inner Shareable (0b11).
    pub const fn par_shareability(self) -> u8 {
        match self {
            MemType::Normal => 0b11,
            _ => 0b10,
        }
    }
}

/// Attributes for a new leaf, built by name rather than by bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafAttrs {
    pub mem: MemType,
    pub el0: bool,
    pub writable: bool,
    /// Executable at EL1.
    pub kexec: bool,
    /// Executable at EL0.
    pub uexec: bool,
    /// Not global (ASID-tagged): user mappings.
    pub ng: bool,
    pub af: bool,
    pub contiguous: bool,
    pub special: bool,
}

impl LeafAttrs {
    /// Kernel read-write data, never executable.
    pub const KERNEL_RW: LeafAttrs = LeafAttrs {
        mem: MemType::Normal,
        el0: false,
        writable: true,
        kexec: false,
        uexec: false,
        ng: false,
        af: true,
        contiguous: false,
        special: false,
    };
    pub const KERNEL_RO: LeafAttrs = LeafAttrs { writable: false, ..Self::KERNEL_RW };
    pub const KERNEL_RX: LeafAttrs = LeafAttrs { writable: false, kexec: true, ..Self::KERNEL_RW };
    pub const KERNEL_DEVICE: LeafAttrs = LeafAttrs { mem: MemType::DeviceNGnRE, ..Self::KERNEL_RW };

    pub fn bits(self) -> u64 {
        use super::super::arch::aarch64::regs::mair;
        let mut r: LocalRegisterCopy<u64, STAGE1::Register> = LocalRegisterCopy::new(0);
        let idx = match self.mem {
            MemType::Normal => mair::NORMAL,
            MemType::NormalNonCacheable => mair::NORMAL_NC,
            MemType::DeviceNGnRnE => mair::DEVICE_NGNRNE,
            MemType::DeviceNGnRE => mair::DEVICE_NGNRE,
        };
        let ap = match (self.el0, self.writable) {
            (false, true) => STAGE1::AP::RwEl1,
            (true, true) => STAGE1::AP::RwEl1El0,
            (false, false) => STAGE1::AP::RoEl1,
            (true, false) => STAGE1::AP::RoEl1El0,
        };
        let sh = match self.mem {
            MemType::Normal | MemType::NormalNonCacheable => STAGE1::SH::Inner,
            _ => STAGE1::SH::Non,
        };
        r.modify(STAGE1::ATTR_INDX.val(idx) + ap + sh);
        if self.af {
            r.modify(STAGE1::AF::SET);
        }
        if self.ng {
            r.modify(STAGE1::NG::SET);
        }
        if !self.kexec {
            r.modify(STAGE1::PXN::SET);
        }
        if !self.uexec {
            r.modify(STAGE1::UXN::SET);
        }
        if self.contiguous {
            r.modify(STAGE1::CONT::SET);
        }
        if self.special {
            r.modify(STAGE1::SW_SPECIAL::SET);
        }
        r.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: Granule = Granule::K4;

    #[test]
    fn swap_and_migration_entries_keep_all_their_state() {
        let b = [false, true];
        for (type_, offset) in [(0u8, 0u64), (1, 1), (31, MAX_SWAP_OFFSET), (7, 0x1234_5678)] {
            for (exclusive, uffd_wp) in b.iter().flat_map(|&x| b.iter().map(move |&y| (x, y))) {
                let np = NonPresent::Swap { entry: SwpEntry { type_, offset }, exclusive, uffd_wp };
                let d = np.encode();
                assert!(!d.is_valid() && d.0 != 0 && d.0 >> 63 == 0);
                assert_eq!(d.kind(3, G), Kind::NonPresent(np));
            }
        }
        let pa = PhysAddr::new(0xffff_ffff_f000);
        for kind in [MigrationKind::Read, MigrationKind::ReadExclusive, MigrationKind::Write] {
            for bits in 0..8u8 {
                let np = NonPresent::Migration {
                    pa,
                    kind,
                    dirty: bits & 1 != 0,
                    young: bits & 2 != 0,
                    uffd_wp: bits & 4 != 0,
                };
                assert_eq!(np.encode().kind(3, G), Kind::NonPresent(np));
            }
        }
        let m = NonPresent::Marker(marker::UFFD_WP);
        assert_eq!(m.encode().kind(3, G), Kind::NonPresent(m));
    }

    #[test]
    fn leaf_round_trip_and_permissions() {
        let d = Desc::leaf(PhysAddr::new(0x4020_0000), 2, LeafAttrs::KERNEL_RW);
        assert_eq!(d.kind(2, G), Kind::Leaf(PhysAddr::new(0x4020_0000)));
        assert_eq!(d.0 & 0b11, 0b01, "block");
        let p = d.perms();
        assert!(!p.el0 && !p.read_only && p.pxn && p.uxn);
        assert!(d.af());
        assert_eq!(d.shareability(), 3);

        let t = Desc::leaf(PhysAddr::new(0x4008_0000), 3, LeafAttrs::KERNEL_RX);
        assert_eq!(t.0 & 0b11, 0b11, "page");
        let p = t.perms();
        assert!(p.read_only && !p.pxn && p.uxn);
    }

    #[test]
    fn table_attrs_round_trip_at_their_architected_bits() {
        let pa = PhysAddr::new(0x4123_4000);
        assert_eq!(Desc::table_with(pa, TableAttrs::NONE), Desc::table(pa));
        for bits in 0..16u8 {
            let a =
                TableAttrs { no_el0: bits & 1 != 0, read_only: bits & 2 != 0, uxn: bits & 4 != 0, pxn: bits & 8 != 0 };
            let d = Desc::table_with(pa, a);
            assert_eq!(d.kind(1, G), Kind::Table(pa), "{a:?} must not disturb the address");
            assert_eq!(d.table_attrs(), a);
            // APTable = bits 62:61, UXNTable = 60, PXNTable = 59 (Arm ARM D8.3.1).
            assert_eq!(d.0 >> 61 & 1 == 1, a.no_el0);
            assert_eq!(d.0 >> 62 & 1 == 1, a.read_only);
            assert_eq!(d.0 >> 60 & 1 == 1, a.uxn);
            assert_eq!(d.0 >> 59 & 1 == 1, a.pxn);
        }
        let up = TableAttrs { no_el0: true, ..TableAttrs::NONE };
        let down = TableAttrs { read_only: true, pxn: true, ..TableAttrs::NONE };
        assert_eq!(up.and_then(down), TableAttrs { no_el0: true, read_only: true, uxn: false, pxn: true });
        assert_eq!(down.and_then(TableAttrs::NONE), down, "a lower table cannot lift a limit");
    }

    #[test]
    fn device_attrs() {
        let d = Desc::leaf(PhysAddr::new(0x0900_0000), 3, LeafAttrs::KERNEL_DEVICE);
        assert_eq!(d.attr_index(), crate::arch::aarch64::regs::mair::DEVICE_NGNRE);
        assert_eq!(d.shareability(), 0);
        assert!(d.perms().pxn);
    }

    #[test]
    fn table_and_reserved_encodings() {
        let t = Desc::table(PhysAddr::new(0x4123_4000));
        assert_eq!(t.kind(0, G), Kind::Table(PhysAddr::new(0x4123_4000)));
        assert_eq!(Desc(0x4000_0001).kind(3, G), Kind::Reserved, "block at level 3");
        assert_eq!(Desc(0x4000_0001).kind(0, G), Kind::Reserved, "no L0 blocks with 4K");
        assert_eq!(Desc(0x4000_0001).kind(1, Granule::K16), Kind::Reserved, "no L1 blocks with 16K");
        assert_eq!(Desc(0).kind(3, G), Kind::None);
    }

    #[test]
    fn block_output_address_is_aligned_to_block_size() {
        let d = Desc(0x4000_0000 | 0x20_0000 | 0x701);
        assert_eq!(d.kind(1, G), Kind::Leaf(PhysAddr::new(0x4000_0000)));
    }

    #[test]
    fn non_present_encodings_round_trip_and_stay_invalid() {
        let cases = [
            NonPresent::Marker(marker::UFFD_WP),
            NonPresent::Marker(marker::GUARD | marker::POISONED),
            NonPresent::ProtNone { pfn: 0x41234 },
        ];
        for c in cases {
            let d = c.encode();
            assert!(!d.is_valid(), "{c:?} must fault in hardware");
            assert_ne!(d.0, 0, "{c:?} must not look like pte_none");
            for level in 0..4 {
                assert_eq!(d.kind(level, G), Kind::NonPresent(c));
            }
        }
    }

    #[test]
    fn software_bits() {
        let a = LeafAttrs { special: true, ..LeafAttrs::KERNEL_RO };
        let d = Desc::leaf(PhysAddr::new(0x1000), 3, a);
        assert!(d.special() && !d.sw_dirty() && !d.uffd_wp());
        assert_eq!(d.0 >> 56 & 1, 1);
    }
}
