# pagelab GDB extension: translation-table walks, ptdump and ESR decoding
# from live CPU state.
#
#   (gdb) source gdb/pagelab.py
#   (gdb) pl-walk 0xffff800000001234     walk the live stage-1 tables for a VA
#   (gdb) pl-ptdump [ttbr1|ttbr0]        Linux-style dump of the live tables
#   (gdb) pl-esr [VALUE]                 decode ESR_EL1 (default: the live one)
#   (gdb) pl-agree VA...                 pl-walk vs. QEMU's `monitor gva2gpa`
#   (gdb) pl-procs                       processes (pid, names, TTBR0 root, ASID, CPU)
#   (gdb) pl-vmas [PID|NAME|current]     a process's VMAs (flags, THP size, memfd)
#   (gdb) p/x $pl_pa(VA)                 PA of VA, or -1 if it does not translate
#
# The table commands are computed from system registers (TTBRn_EL1, TCR_EL1,
# SCTLR_EL1, MAIR_EL1, ESR_EL1, FAR_EL1) and physical memory, read through
# QEMU's gdbstub extension `Qqemu.PhyMemMode:1`. No kernel symbol or data
# structure is used, so they also work when the kernel is wedged, in the
# middle of a table update, or when its own page-table code is what is broken.
#
# Other debug servers (pl-phys, pl-sysreg):
#   (gdb) pl-phys [auto|qemu|xp|openocd]  how physical memory is read: QEMU's
#         packet, QEMU's monitor `xp`, or OpenOCD's `mdd phys` (JTAG on a
#         real board); auto tries them in that order
#   (gdb) pl-sysreg [NAME [VALUE|-]]      give a system register the server
#         does not expose (OpenOCD shows no TTBR/TCR/SCTLR/MAIR), e.g. the
#         values the console's `info` prints; `-` forgets it
#
# pl-procs/pl-vmas need kernel data: the fixed-layout mirror
# PAGELAB_DEBUG_PROCS (kernel/src/proc/debug_table.rs; layout described
# below), found by symbol and read through the MMU, or through a software walk
# of the live tables if QEMU refuses the read. They check its magic and
# layout version, and report slots caught mid-update and overflowed tables.
#
# The decoding logic (granule arithmetic, descriptors, walks, ptdump lines,
# ESR) is plain Python with no gdb dependency, so the file can be imported by
# python3 directly; `python3 gdb/pagelab.py --selftest` unit-tests it.

import re
import sys

try:
    import gdb  # noqa: F401  (only present inside GDB)
    if not hasattr(gdb, "execute"):  # e.g. this very `gdb/` directory as a namespace package
        gdb = None
except ImportError:
    gdb = None

MASK64 = (1 << 64) - 1


def bits(v, hi, lo):
    """Bits hi:lo of v (inclusive), shifted down."""
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def bit(v, n):
    return (v >> n) & 1


def mask(hi, lo):
    """A mask with bits hi:lo set."""
    return ((1 << (hi - lo + 1)) - 1) << lo


def ceil_div(a, b):
    return -(-a // b)


# ---------------------------------------------------------------------------
# Granule arithmetic (Arm ARM D8.2, "Translation table walk").
# ---------------------------------------------------------------------------

GRANULE_NAMES = {12: "4K", 14: "16K", 16: "64K"}
# TCR_EL1.TG0 and TG1 encode the granule differently.
TG0_PAGE_SHIFT = {0b00: 12, 0b01: 16, 0b10: 14}
TG1_PAGE_SHIFT = {0b10: 12, 0b01: 14, 0b11: 16}
# TCR_EL1.IPS -> physical address bits.
IPS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}


def bits_per_level(page_shift):
    """VA bits one table level resolves (a table is one granule of 8-byte entries)."""
    return page_shift - 3


def level_shift(page_shift, level):
    """Lowest VA bit a level-`level` entry resolves (level 3 = one page)."""
    return page_shift + (3 - level) * (page_shift - 3)


def level_size(page_shift, level):
    return 1 << level_shift(page_shift, level)


def start_level(va_bits, page_shift):
    """First lookup level: 4 - ceil((va_bits - page_shift) / (page_shift - 3)).
    -1 only happens with 52-bit VAs and a 4K granule (FEAT_LPA2)."""
    return 4 - ceil_div(va_bits - page_shift, page_shift - 3)


def index_bits(va_bits, page_shift, level, first_level):
    """VA bits the table at `level` is indexed by (fewer at the first level)."""
    if level == first_level:
        return va_bits - level_shift(page_shift, level)
    return page_shift - 3


def va_index(va, va_bits, page_shift, level, first_level):
    n = index_bits(va_bits, page_shift, level, first_level)
    return (va >> level_shift(page_shift, level)) & ((1 << n) - 1)


def block_allowed(page_shift, level, ds=False, lpa=False):
    """Whether a block descriptor (bit 1 clear) is legal at `level`.
    4K: levels 1-2 (and 0 with DS=1); 16K: level 2 (and 1 with DS=1);
    64K: level 2 (and 1 when the CPU has 52-bit PAs, FEAT_LPA). Never at level 3 or -1."""
    if page_shift == 12:
        return level in (1, 2) or (level == 0 and ds)
    if page_shift == 14:
        return level == 2 or (level == 1 and ds)
    if page_shift == 16:
        return level == 2 or (level == 1 and lpa)
    return False


def contiguous_entries(page_shift, level):
    """Entries one contiguous-bit group spans (Arm ARM D8.6.1)."""
    return {(12, 3): 16, (12, 2): 16, (14, 3): 128, (14, 2): 32,
            (16, 3): 32, (16, 2): 32}.get((page_shift, level), 1)


def level_name(level, first_level):
    """Linux ptdump's name for a level (same rule as the kernel's ptdump)."""
    if level == 3:
        return "PTE"
    if level == 2:
        return "PMD"
    if level == first_level:
        return "PGD"
    return {1: "PUD", 0: "P4D"}.get(level, "???")


def size_str(size):
    """(number, unit) the way the kernel's / Linux's ptdump prints a size."""
    units = " KMGT"
    u = 0
    while size >= 1024 and size % 1024 == 0 and u < len(units) - 1:
        size //= 1024
        u += 1
    return size, units[u]


# ---------------------------------------------------------------------------
# TCR_EL1: the parameters of one half (TTBR0 or TTBR1) of the EL1&0 regime.
# ---------------------------------------------------------------------------

class HalfParams(object):
    def __init__(self, tcr, upper, mmfr0=None, mmfr2=None):
        """`mmfr0`/`mmfr2`: ID_AA64MMFR0_EL1/ID_AA64MMFR2_EL1 if known (PARange,
        LVA, TTST); without them the TCR alone decides."""
        self.tcr = tcr
        self.upper = upper
        self.n = 1 if upper else 0
        if upper:
            self.tsz = bits(tcr, 21, 16)
            self.tg = bits(tcr, 31, 30)
            self.epd = bit(tcr, 23)
            self.tbi = bit(tcr, 38)
            self.hpd = bit(tcr, 42)
            self.sh = bits(tcr, 29, 28)
            self.page_shift = TG1_PAGE_SHIFT.get(self.tg)
        else:
            self.tsz = bits(tcr, 5, 0)
            self.tg = bits(tcr, 15, 14)
            self.epd = bit(tcr, 7)
            self.tbi = bit(tcr, 37)
            self.hpd = bit(tcr, 41)
            self.sh = bits(tcr, 13, 12)
            self.page_shift = TG0_PAGE_SHIFT.get(self.tg)
        ps = self.page_shift
        self.ips = bits(tcr, 34, 32)
        self.ips_bits = IPS_BITS.get(self.ips, 52)
        self.cpu_pa_bits = IPS_BITS.get(mmfr0 & 0xf, 48) if mmfr0 is not None else None
        # The effective output size is the smaller of IPS and the CPU's PARange.
        self.pa_bits = min(self.ips_bits, self.cpu_pa_bits or 52)
        # DS (FEAT_LPA2) only exists for 4K and 16K granules.
        self.ds = bit(tcr, 59) if ps in (12, 14) else 0
        self.ha = bit(tcr, 39)
        self.hd = bit(tcr, 40)
        self.va_bits = 64 - self.tsz
        # OA bits 51:48 come from the descriptor (and TTBR bits 5:2) only when
        # the effective output size is 52 bits (as QEMU does).
        self.pa52 = self.pa_bits == 52 and (ps == 16 or bool(self.ds))
        # 64K level-1 blocks (4TB) exist when the CPU has 52-bit PAs (FEAT_LPA),
        # AArch64.BlockDescSupported(): PAMax() == 52.
        if self.cpu_pa_bits is not None:
            self.lpa = self.cpu_pa_bits == 52
        else:
            self.lpa = self.ips == 6
        lva = bits(mmfr2, 19, 16) >= 1 if mmfr2 is not None else True
        ttst = bits(mmfr2, 31, 28) >= 1 if mmfr2 is not None else True
        self.min_tsz = 12 if (self.ds or (ps == 16 and lva)) else 16
        self.max_tsz = (47 if ps == 16 else 48) if ttst else 39
        if ps is not None:
            self.first_level = start_level(self.va_bits, ps)
            self.first_entries = 1 << index_bits(self.va_bits, ps, self.first_level, self.first_level)
        else:
            self.first_level = None
            self.first_entries = 0

    @property
    def name(self):
        return "TTBR%d_EL1" % self.n

    def problems(self):
        """Configuration errors that stop a walk (reserved encodings)."""
        p = []
        if self.page_shift is None:
            p.append("TG%d=%d is a reserved granule encoding" % (self.n, self.tg))
        if not (self.min_tsz <= self.tsz <= self.max_tsz):
            p.append("T%dSZ=%d is outside %d..%d (CONSTRAINED UNPREDICTABLE; QEMU reports a level 0 "
                     "translation fault)" % (self.n, self.tsz, self.min_tsz, self.max_tsz))
        return p

    def describe(self):
        if self.page_shift is None:
            return "T%dSZ=%d, TG%d=%d (reserved)" % (self.n, self.tsz, self.n, self.tg)
        levels = 4 - self.first_level
        return ("T%dSZ=%d -> %d-bit VA, %s granule (TG%d=%d), start level %d (%d levels, %d entries), "
                "IPS=%d -> %d-bit PA%s, EPD%d=%d TBI%d=%d HPD%d=%d%s%s" % (
                    self.n, self.tsz, self.va_bits, GRANULE_NAMES[self.page_shift], self.n, self.tg,
                    self.first_level, levels, self.first_entries, self.ips, self.ips_bits,
                    " (CPU: %d-bit)" % self.cpu_pa_bits if self.cpu_pa_bits is not None else "",
                    self.n, self.epd, self.n, self.tbi, self.n, self.hpd,
                    " DS=1 (LPA2)" if self.ds else "", " HA=1" if self.ha else ""))

    def region_base(self):
        """Lowest VA of this half."""
        if self.upper:
            return (MASK64 << self.va_bits) & MASK64
        return 0

    def va_in_range(self, va):
        """The bits above va_bits (up to 55 with TBI) must be all 0 (TTBR0) or all 1 (TTBR1)."""
        top = 55 if self.tbi else 63
        if top < self.va_bits:
            return True
        want = mask(top, self.va_bits) if self.upper else 0
        return (va & mask(top, self.va_bits)) == want


def ttbr_table_base(ttbr, hp):
    """First-level table PA from TTBRn_EL1 (BADDR; bit 0 is CnP; 63:48 ASID)."""
    if hp.pa52:
        base = ttbr & mask(47, 6)
        base |= bits(ttbr, 5, 2) << 48
    else:
        base = ttbr & mask(47, 1)
    align = max(64, hp.first_entries * 8)
    return base & ~(align - 1)


# ---------------------------------------------------------------------------
# Descriptors (Arm ARM D8.3, VMSAv8-64 stage 1).
# ---------------------------------------------------------------------------

# MAIR attribute indices, numbered like Linux arm64's MT_* (the kernel's choice).
LINUX_MT_NAMES = {0: "MEM/NORMAL", 1: "MEM/NORMAL-TAGGED", 2: "MEM/NORMAL-NC",
                  3: "DEVICE/nGnRnE", 4: "DEVICE/nGnRE"}
LINUX_MT_MAIR = {0: 0xff, 1: 0xff, 2: 0x44, 3: 0x00, 4: 0x04}

SW_BITS = {55: "SW_DIRTY", 56: "SW_SPECIAL", 57: "SW_UFFD_WP", 58: "SW_RESERVED"}

# The kernel's software encoding of non-present entries (kernel/src/mm/desc.rs).
NP_KINDS = {1: "swap", 2: "migration", 3: "marker", 4: "prot-none"}
NP_MARKERS = {1: "UFFD_WP", 2: "POISONED", 4: "GUARD"}

OA_MASK_4K = 0x0000fffffffff000  # what the kernel's ptdump treats as address bits


def mair_attr_name(attr):
    """Decode one MAIR_ELx attribute byte."""
    if attr & 0xf0 == 0:
        dev = {0x00: "nGnRnE", 0x04: "nGnRE", 0x08: "nGRE", 0x0c: "GRE"}.get(attr & 0x0f)
        return "Device-" + dev if dev else "Device-?(0x%02x)" % attr
    if attr == 0xf0:
        return "Normal-Tagged WB"
    if attr == 0x44:
        return "Normal-NC"
    if attr == 0xff:
        return "Normal WB RW-alloc"
    if attr == 0xbb:
        return "Normal WT"
    return "Normal(outer 0x%x, inner 0x%x)" % (attr >> 4, attr & 0xf)


def mt_name(idx, mair=None):
    """ptdump's memory-type column: the Linux MT_* name of the index, with a
    note if the live MAIR byte does not hold the encoding Linux uses there."""
    name = LINUX_MT_NAMES.get(idx, "MEM/??")
    if mair is not None and idx in LINUX_MT_MAIR:
        attr = (mair >> (8 * idx)) & 0xff
        if attr != LINUX_MT_MAIR[idx]:
            name += "(MAIR=0x%02x?)" % attr
    return name


def desc_oa(desc, align_shift, hp=None):
    """Output address of a table/block/page descriptor, aligned to 2^align_shift.
    With DS=1 the address field is bits 49:shift, plus 9:8 for OA[51:50];
    with 64K and 52-bit PAs bits 15:12 hold OA[51:48]."""
    ds = hp.ds if hp else 0
    if ds:
        oa = desc & mask(49, align_shift)
    else:
        oa = desc & mask(47, align_shift)
    if hp is not None and hp.pa52:
        if ds:
            oa |= bits(desc, 9, 8) << 50
        else:
            oa |= bits(desc, 15, 12) << 48
    return oa


class Desc(object):
    """A descriptor value decoded as found at `level`."""

    def __init__(self, value, level, hp=None):
        self.value = value
        self.level = level
        ps = hp.page_shift if hp else 12
        self.ps = ps
        ds = hp.ds if hp else 0
        lpa = hp.lpa if hp else False
        self.ds = ds
        v = value
        self.valid = bool(v & 1)
        self.oa = None
        if v == 0:
            self.kind = "none"
        elif not self.valid:
            self.kind = "invalid"
        elif level == 3:
            self.kind = "page" if v & 2 else "reserved"
        elif v & 2:
            self.kind = "table"
        elif level >= 0 and block_allowed(ps, level, ds, lpa):
            self.kind = "block"
        else:
            self.kind = "reserved"
        if self.kind == "table":
            self.oa = desc_oa(v, ps, hp)
        elif self.kind in ("block", "page"):
            self.oa = desc_oa(v, level_shift(ps, level), hp)
        self.size = level_size(ps, level) if level >= -1 else None
        # Leaf attributes (also decoded for invalid entries, as ptdump does).
        self.attr_idx = bits(v, 4, 2)
        self.ns = bit(v, 5)
        self.ap = bits(v, 7, 6)
        self.el0 = bool(self.ap & 1)
        self.read_only = bool(self.ap & 2)
        self.sh = None if (ds and ps in (12, 14)) else bits(v, 9, 8)
        self.af = bit(v, 10)
        self.ng = bit(v, 11)
        self.dbm = bit(v, 51)
        self.con = bit(v, 52)
        self.pxn = bit(v, 53)
        self.uxn = bit(v, 54)
        self.sw = [n for b, n in sorted(SW_BITS.items()) if bit(v, b)]
        # Table attributes.
        self.pxn_table = bit(v, 59)
        self.uxn_table = bit(v, 60)
        self.ap_table = bits(v, 62, 61)
        self.ns_table = bit(v, 63)

    def is_leaf(self):
        return self.kind in ("block", "page")

    def attr_bits(self):
        """What ptdump merges on: everything but the type and address bits."""
        return self.value & ~(OA_MASK_4K | 3) & MASK64

    def sh_name(self):
        if self.sh is None:
            return "SH(TCR)"
        return {0: "NSH", 1: "SH?1", 2: "OSH", 3: "ISH"}[self.sh]

    def nonpresent_str(self):
        v = self.value
        kind = bits(v, 3, 1)
        payload = v >> 12
        if kind == 1:
            return "pagelab swap entry: slot %#x%s%s" % (
                payload, " exclusive" if bit(v, 4) else "", " uffd-wp" if bit(v, 5) else "")
        if kind == 2:
            return "pagelab migration entry: pfn %#x%s" % (payload, " writable" if bit(v, 6) else "")
        if kind == 3:
            names = [n for b, n in sorted(NP_MARKERS.items()) if payload & b]
            return "pagelab PTE marker %#x (%s)" % (payload, ",".join(names) or "none")
        if kind == 4:
            return "pagelab prot-none: pfn %#x" % payload
        return "unknown software encoding"

    def leaf_attrs_str(self, mair=None):
        idx = self.attr_idx
        if mair is not None:
            attr = (mair >> (8 * idx)) & 0xff
            mem = "%s, MAIR 0x%02x %s" % (mt_name(idx), attr, mair_attr_name(attr))
        else:
            mem = mt_name(idx)
        s = "AttrIndx=%d (%s) AP=%d (%s, %s) SH=%s AF=%d nG=%d CON=%d PXN=%d UXN=%d" % (
            idx, mem, self.ap, "ro" if self.read_only else "RW",
            "EL0+EL1" if self.el0 else "EL1 only", self.sh_name(), self.af, self.ng,
            self.con, self.pxn, self.uxn)
        if self.dbm:
            s += " DBM=1"
        if self.ns:
            s += " NS=1"
        s += " sw=[%s]" % ",".join(self.sw)
        return s

    def table_attrs_str(self):
        s = []
        if self.pxn_table:
            s.append("PXNTable")
        if self.uxn_table:
            s.append("UXNTable")
        if self.ap_table:
            s.append("APTable=%d (%s%s)" % (
                self.ap_table, "no EL0" if self.ap_table & 1 else "",
                ("," if self.ap_table & 1 else "") + "ro" if self.ap_table & 2 else ""))
        if self.ns_table:
            s.append("NSTable")
        # Bits 58:52 and 11:2 of a table descriptor are ignored by the MMU.
        return " ".join(s) if s else "no table attributes"

    def describe(self, mair=None):
        """One-line decoding (type, output address, attributes)."""
        v = self.value
        if self.kind == "none":
            return "empty (0): translation fault"
        if self.kind == "invalid":
            return "invalid (bit 0 clear; %s): translation fault" % self.nonpresent_str()
        if self.kind == "reserved":
            why = "block at level 3" if self.level == 3 else "block not allowed at level %d with %s granule" % (
                self.level, GRANULE_NAMES.get(self.ps, "?"))
            return "reserved encoding (%s): translation fault" % why
        if self.kind == "table":
            return "table -> next table at PA %#x; %s" % (self.oa, self.table_attrs_str())
        n, u = size_str(self.size)
        return "%s %d%s -> PA %#x; %s" % (self.kind, n, u.strip(), self.oa, self.leaf_attrs_str(mair))


def ptdump_attrs(d, mair=None):
    """Attribute columns exactly as the kernel's ptdump (kernel/src/mm/ptdump.rs)."""
    cols = [
        " " if d.valid else "F",
        "USR" if d.el0 else "   ",
        "ro" if d.read_only else "RW",
        "NX" if d.pxn else "x ",
        "SHD" if d.sh == 3 else "   ",
        "AF" if d.af else "  ",
        "NG" if d.ng else "  ",
        "CON" if d.con else "   ",
        "BLK" if d.level < 3 else "   ",
        "UXN" if d.uxn else "   ",
    ]
    s = " ".join(cols) + "    " + mt_name(d.attr_idx, mair)
    if bit(d.value, 56):
        s += " SPECIAL"
    return s


# ---------------------------------------------------------------------------
# Walks. `read` is read(pa, count) -> list of `count` u64 values.
# ---------------------------------------------------------------------------

class Step(object):
    def __init__(self, level, table, index, desc):
        self.level = level
        self.table = table
        self.index = index
        self.addr = table + index * 8
        self.desc = desc


class WalkResult(object):
    def __init__(self, va):
        self.va = va
        self.hp = None
        self.ttbr = None
        self.steps = []
        self.pa = None          # output PA, also set with an access flag fault
        self.fault = None       # (kind, level, reason) or None
        self.leaf = None
        self.notes = []
        # Effective permissions after hierarchical table attributes.
        self.eff_ro = None
        self.eff_el0 = None
        self.eff_pxn = None
        self.eff_uxn = None

    def translated(self):
        """The PA the tables give the VA, or None on a translation or address
        size fault. An access flag fault still has a PA: the mapping exists
        (QEMU's `monitor gva2gpa` also ignores AF)."""
        if self.fault and self.fault[0] != "access flag":
            return None
        return self.pa

    def fault_str(self):
        if not self.fault:
            return ""
        kind, level, why = self.fault
        return "%s fault at level %d (%s)" % (kind, level, why)


def regime_from_regs(regs):
    return regs.get("TCR_EL1", 0), regs.get("TTBR0_EL1", 0), regs.get("TTBR1_EL1", 0)


def half_params(regs, upper):
    return HalfParams(regs.get("TCR_EL1", 0), upper, regs.get("ID_AA64MMFR0_EL1"), regs.get("ID_AA64MMFR2_EL1"))


def walk(va, regs, read):
    """Stage-1 EL1&0 walk of `va` from register values (dict with TCR_EL1,
    TTBR0_EL1, TTBR1_EL1 and optionally SCTLR). Returns a WalkResult."""
    va &= MASK64
    r = WalkResult(va)
    tcr, ttbr0, ttbr1 = regime_from_regs(regs)
    sctlr = regs.get("SCTLR")
    if sctlr is not None and not sctlr & 1:
        r.notes.append("SCTLR_EL1.M=0: stage 1 is off, VA = PA")
        r.pa = va
        return r
    upper = bool(bit(va, 55))
    hp = half_params(regs, upper)
    r.hp = hp
    r.ttbr = ttbr1 if upper else ttbr0
    if hp.epd:
        r.fault = ("translation", 0, "TCR_EL1.EPD%d=1: walks through %s are disabled" % (hp.n, hp.name))
        return r
    probs = hp.problems()
    if probs:
        r.fault = ("translation", 0, "; ".join(probs))
        return r
    if not hp.va_in_range(va):
        r.fault = ("translation", 0,
                   "VA outside the %s range: bits %d..%d must all be %d (T%dSZ=%d%s)" % (
                       hp.name, hp.va_bits, 55 if hp.tbi else 63, 1 if upper else 0,
                       hp.n, hp.tsz, ", TBI" if hp.tbi else ""))
        return r
    ps = hp.page_shift
    table = ttbr_table_base(r.ttbr, hp)
    ro, el0_denied, pxn, uxn = False, False, False, False
    for level in range(hp.first_level, 4):
        idx = va_index(va, hp.va_bits, ps, level, hp.first_level)
        value = read(table + idx * 8, 1)[0]
        d = Desc(value, level, hp)
        r.steps.append(Step(level, table, idx, d))
        if d.kind in ("none", "invalid", "reserved"):
            r.fault = ("translation", level, {"none": "descriptor is 0",
                                              "invalid": "descriptor bit 0 clear",
                                              "reserved": "reserved descriptor encoding"}[d.kind])
            return r
        if d.oa >> hp.pa_bits:
            r.fault = ("address size", level, "output address %#x above the %d-bit PA size (IPS)" % (
                d.oa, hp.pa_bits))
            return r
        if d.kind == "table":
            if level == 3:  # cannot happen: level 3 bit 1 set is a page
                break
            if not hp.hpd:
                ro = ro or bool(d.ap_table & 2)
                el0_denied = el0_denied or bool(d.ap_table & 1)
                pxn = pxn or bool(d.pxn_table)
                uxn = uxn or bool(d.uxn_table)
            table = d.oa
            continue
        # Leaf.
        r.leaf = d
        r.pa = d.oa | (va & (d.size - 1))
        r.eff_ro = d.read_only or ro
        r.eff_el0 = d.el0 and not el0_denied
        r.eff_pxn = bool(d.pxn) or pxn
        r.eff_uxn = bool(d.uxn) or uxn
        # EL0-writable memory is never executable at EL1 (implicit PXN).
        if d.el0 and not d.read_only:
            r.eff_pxn = True
        if not d.af and not hp.ha:
            r.fault = ("access flag", level, "AF=0 and TCR_EL1.HA=0")
        if d.con:
            n = contiguous_entries(ps, level)
            first = idx & ~(n - 1)
            grp = read(table + first * 8, n)
            bad = [i for i, x in enumerate(grp) if not (x & 1) or not bit(x, 52)]
            if bad:
                r.notes.append("contiguous bit set but %d of the %d entries in the group (from index %d) "
                               "are invalid or lack it: misprogramming (TLB conflict / wrong translation)"
                               % (len(bad), n, first))
        return r
    r.fault = ("translation", 3, "walk did not end in a leaf")
    return r


def ptdump(upper, regs, read, markers=(), mair=None):
    """Kernel/Linux-style dump of one half. Returns (lines, leaves, ranges, tables)."""
    tcr, ttbr0, ttbr1 = regime_from_regs(regs)
    hp = half_params(regs, upper)
    out = []
    if hp.problems():
        return (["# cannot walk: %s" % "; ".join(hp.problems())], 0, 0, 0)
    ps = hp.page_shift
    root = ttbr_table_base(ttbr1 if upper else ttbr0, hp)
    state = {"cur": None, "leaves": 0, "lines": 0, "tables": 1, "marker": 0}
    markers = sorted(markers)

    def flush():
        cur = state["cur"]
        if cur is None:
            return
        start, end, level, _, d = cur
        n, unit = size_str((end - start) & MASK64 or (1 << 64))
        out.append("%#018x-%#018x %9d%s %-5s  %s" % (
            start, end, n, unit, level_name(level, hp.first_level), ptdump_attrs(d, mair)))
        state["lines"] += 1
        state["cur"] = None

    def entry(va, level, d):
        while state["marker"] < len(markers) and markers[state["marker"]][0] <= va:
            flush()
            out.append("---[ %s ]---" % markers[state["marker"]][1])
            state["marker"] += 1
        state["leaves"] += 1
        size = level_size(ps, level)
        cur = state["cur"]
        if cur is not None and cur[1] == va and cur[2] == level and cur[3] == d.attr_bits():
            cur[1] = (va + size) & MASK64
            return
        flush()
        state["cur"] = [va, (va + size) & MASK64, level, d.attr_bits(), d]

    def walk_table(table, level, base):
        n = hp.first_entries if level == hp.first_level else 1 << (ps - 3)
        values = read(table, n)
        size = level_size(ps, level)
        for i, v in enumerate(values):
            if v == 0:
                continue
            va = (base + i * size) & MASK64
            d = Desc(v, level, hp)
            if d.kind == "table" and level < 3:
                state["tables"] += 1
                walk_table(d.oa, level + 1, va)
            else:
                entry(va, level, d)

    walk_table(root, hp.first_level, hp.region_base())
    flush()
    return out, state["leaves"], state["lines"], state["tables"]


# pagelab's kernel VA layout (kernel/src/mm/layout.rs), for the TTBR1 markers.
PAGELAB_TTBR1_MARKERS = [
    (0xffff000000000000, "Linear Mapping start"),
    (0xffff700000000000, "MMIO start"),
    (0xffff800000000000, "Kernel Image start"),
]


# ---------------------------------------------------------------------------
# ESR_ELx (Arm ARM D24.2.41 ESR_EL1; Linux arch/arm64/include/asm/esr.h).
# ---------------------------------------------------------------------------

EC_NAMES = {
    0x00: "Unknown reason",
    0x01: "Trapped WFI/WFE",
    0x03: "Trapped MCR/MRC (coproc 0b1111, AArch32)",
    0x04: "Trapped MCRR/MRRC (coproc 0b1111, AArch32)",
    0x05: "Trapped MCR/MRC (coproc 0b1110, AArch32)",
    0x06: "Trapped LDC/STC (AArch32)",
    0x07: "Access to SME/SVE/Advanced SIMD/FP trapped",
    0x08: "Trapped VMRS (EL2)",
    0x09: "Pointer authentication instruction trapped",
    0x0a: "LD64B/ST64B or other trapped instruction",
    0x0c: "Trapped MRRC (coproc 0b1110, AArch32)",
    0x0d: "Branch Target Exception",
    0x0e: "Illegal Execution state",
    0x11: "SVC (AArch32)",
    0x12: "HVC (AArch32)",
    0x13: "SMC (AArch32)",
    0x15: "SVC (AArch64)",
    0x16: "HVC (AArch64)",
    0x17: "SMC (AArch64)",
    0x18: "Trapped MSR/MRS/system instruction (AArch64)",
    0x19: "SVE access trapped",
    0x1a: "ERET/ERETAA/ERETAB trapped",
    0x1b: "TSTART (TME) exception",
    0x1c: "Pointer authentication failure (FPAC)",
    0x1d: "SME access trapped",
    0x1f: "IMPLEMENTATION DEFINED (EL3)",
    0x20: "Instruction Abort from a lower EL",
    0x21: "Instruction Abort from the same EL",
    0x22: "PC alignment fault",
    0x24: "Data Abort from a lower EL",
    0x25: "Data Abort from the same EL",
    0x26: "SP alignment fault",
    0x27: "Memory Operation (MOPS) exception",
    0x28: "Trapped floating-point exception (AArch32)",
    0x2c: "Trapped floating-point exception (AArch64)",
    0x2d: "Guarded Control Stack exception",
    0x2f: "SError",
    0x30: "Breakpoint from a lower EL",
    0x31: "Breakpoint from the same EL",
    0x32: "Software Step from a lower EL",
    0x33: "Software Step from the same EL",
    0x34: "Watchpoint from a lower EL",
    0x35: "Watchpoint from the same EL",
    0x38: "BKPT (AArch32)",
    0x3a: "Vector Catch (AArch32)",
    0x3c: "BRK (AArch64)",
    0x3d: "PMU exception",
}

ABORT_ECS = (0x20, 0x21, 0x24, 0x25)
DATA_ABORT_ECS = (0x24, 0x25)


def fault_status(fsc):
    """(kind, level or None, text) for a DFSC/IFSC value."""
    lvl = fsc & 3
    table = {
        0x29: ("address size", -1), 0x2c: ("address size", -2),
        0x2b: ("translation", -1), 0x2a: ("translation", -2),
        0x13: ("synchronous external abort on table walk", -1),
        0x12: ("synchronous external abort on table walk", -2),
        0x1b: ("synchronous parity/ECC error on table walk", -1),
        0x23: ("granule protection fault on table walk", -1),
        0x22: ("granule protection fault on table walk", -2),
    }
    if fsc in table:
        kind, level = table[fsc]
    elif fsc <= 0x03:
        kind, level = "address size", lvl
    elif fsc <= 0x07:
        kind, level = "translation", lvl
    elif fsc <= 0x0b:
        kind, level = "access flag", lvl
    elif fsc <= 0x0f:
        kind, level = "permission", lvl
    elif 0x14 <= fsc <= 0x17:
        kind, level = "synchronous external abort on table walk", lvl
    elif 0x1c <= fsc <= 0x1f:
        kind, level = "synchronous parity/ECC error on table walk", lvl
    elif 0x24 <= fsc <= 0x27:
        kind, level = "granule protection fault on table walk", lvl
    else:
        kind, level = {
            0x10: "synchronous external abort (not on a table walk)",
            0x11: "synchronous tag check fault (MTE)",
            0x18: "synchronous parity/ECC error (not on a table walk)",
            0x21: "alignment fault",
            0x28: "granule protection fault (not on a table walk)",
            0x30: "TLB conflict abort",
            0x31: "unsupported atomic hardware update",
            0x34: "IMPLEMENTATION DEFINED fault (lockdown)",
            0x35: "IMPLEMENTATION DEFINED fault (unsupported exclusive or atomic)",
            0x3d: "section domain fault (AArch32)",
            0x3e: "page domain fault (AArch32)",
        }.get(fsc, "reserved fault status code"), None
    if kind in ("address size", "translation", "access flag", "permission"):
        text = "%s fault, level %d" % (kind, level)
    elif level is not None:
        text = "%s, level %d" % (kind, level)
    else:
        text = kind
    return kind, level, text


class EsrInfo(object):
    pass


def decode_esr(esr):
    """Decode an ESR_EL1 value. Returns an EsrInfo with fields and `lines`."""
    e = EsrInfo()
    e.value = esr
    e.ec = bits(esr, 31, 26)
    e.il = bit(esr, 25)
    e.iss = bits(esr, 24, 0)
    e.iss2 = bits(esr, 55, 32)
    e.ec_name = EC_NAMES.get(e.ec, "reserved/unallocated EC")
    e.is_abort = e.ec in ABORT_ECS
    e.is_data = e.ec in DATA_ABORT_ECS
    e.fsc = e.fault_kind = e.fault_level = e.fault_text = None
    e.wnr = e.cm = e.s1ptw = e.ea = e.fnv = e.isv = 0
    e.sas = e.srt = e.sse = e.sf = e.ar = None
    lines = ["ESR_EL1 %#x: EC %#04x %s, IL=%d (%s), ISS %#x" % (
        esr, e.ec, e.ec_name, e.il, "32-bit instruction" if e.il else "16-bit instruction or n/a", e.iss)]
    if e.is_abort:
        e.fsc = esr & 0x3f
        e.fault_kind, e.fault_level, e.fault_text = fault_status(e.fsc)
        e.s1ptw = bit(esr, 7)
        e.ea = bit(esr, 9)
        e.fnv = bit(esr, 10)
        e.set = bits(esr, 12, 11)
        what = "DFSC" if e.is_data else "IFSC"
        lines.append("  %s %#04x: %s" % (what, e.fsc, e.fault_text))
        if e.is_data:
            e.wnr = bit(esr, 6)
            e.cm = bit(esr, 8)
            e.isv = bit(esr, 24)
            lines.append("  WnR=%d (%s), CM=%d%s" % (
                e.wnr, "write" if e.wnr else "read", e.cm,
                " (cache maintenance, reported as a write)" if e.cm else ""))
            if e.isv:
                e.sas = bits(esr, 23, 22)
                e.sse = bit(esr, 21)
                e.srt = bits(esr, 20, 16)
                e.sf = bit(esr, 15)
                e.ar = bit(esr, 14)
                lines.append("  ISV=1: %d-byte access (SAS=%d), register %s%d (SRT=%d), SSE=%d SF=%d AR=%d" % (
                    1 << e.sas, e.sas, "x" if e.sf else "w", e.srt, e.srt, e.sse, e.sf, e.ar))
            else:
                lines.append("  ISV=0: no instruction syndrome (SAS/SRT not valid)")
            if bit(esr, 13):
                lines.append("  VNCR=1: fault on a VNCR_EL2 access")
        lines.append("  S1PTW=%d%s, EA=%d, FnV=%d%s" % (
            e.s1ptw, " (stage-2 fault on a stage-1 table walk)" if e.s1ptw else "", e.ea,
            e.fnv, " (FAR is not valid)" if e.fnv else " (FAR valid)"))
    elif e.ec in (0x15, 0x16, 0x17, 0x11, 0x12, 0x13):
        lines.append("  imm16 %#x" % (esr & 0xffff))
    elif e.ec == 0x3c:
        lines.append("  BRK comment %#x" % (esr & 0xffff))
    elif e.ec == 0x18:
        op0, op2, op1 = bits(esr, 21, 20), bits(esr, 19, 17), bits(esr, 16, 14)
        crn, rt, crm, rd = bits(esr, 13, 10), bits(esr, 9, 5), bits(esr, 4, 1), bit(esr, 0)
        reg = "S%d_%d_C%d_C%d_%d" % (op0, op1, crn, crm, op2)
        lines.append("  %s" % (("MRS x%d, %s" % (rt, reg)) if rd else ("MSR %s, x%d" % (reg, rt))))
    elif e.ec == 0x01:
        lines.append("  %s" % {0: "WFI", 1: "WFE", 2: "WFIT", 3: "WFET"}[esr & 3])
    elif e.ec == 0x2f:
        lines.append("  IDS=%d AET=%d EA=%d DFSC %#04x" % (bit(esr, 24), bits(esr, 12, 10), bit(esr, 9), esr & 0x3f))
    elif e.ec == 0x00:
        lines.append("  (undefined instruction, or an exception with no syndrome)")
    if e.iss2:
        lines.append("  ISS2 %#x" % e.iss2)
    e.lines = lines
    e.summary = "EC %#04x %s%s" % (e.ec, e.ec_name, (", " + e.fault_text) if e.fault_text else "")
    if e.is_data:
        e.summary += ", WnR=%d" % e.wnr
    return e


# ---------------------------------------------------------------------------
# Misc. helpers (pure).
# ---------------------------------------------------------------------------

def parse_gva2gpa(text):
    """QEMU `monitor gva2gpa` output -> PA (int), None for 'Unmapped'.
    Raises ValueError on anything else."""
    m = re.search(r"gpa:\s*(0x[0-9a-fA-F]+)", text)
    if m:
        return int(m.group(1), 16)
    if "Unmapped" in text or "unmapped" in text:
        return None
    raise ValueError("unexpected gva2gpa output: %r" % text.strip())


def format_walk(r, mair=None):
    """Text of a walk (what pl-walk prints)."""
    out = []
    hp = r.hp
    if hp is None:
        out += ["VA %#018x" % r.va] + ["  note: " + n for n in r.notes]
        if r.pa is not None:
            out.append("=> PA %#x" % r.pa)
        return out
    out.append("VA %#018x: VA[55]=%d -> %s = %#018x (ASID %d), TCR_EL1 = %#x" % (
        r.va, 1 if hp.upper else 0, hp.name, r.ttbr, r.ttbr >> 48, hp.tcr))
    out.append("  " + hp.describe())
    for s in r.steps:
        out.append("  L%-2d [%4d] @ PA %#x: %#018x  %s" % (
            s.level, s.index, s.addr, s.desc.value, s.desc.describe(mair)))
    for n in r.notes:
        out.append("  note: " + n)
    if r.leaf is not None:
        out.append("  effective (with table attributes): %s, %s, %s, %s" % (
            "ro" if r.eff_ro else "RW", "EL0+EL1" if r.eff_el0 else "EL1 only",
            "PXN" if r.eff_pxn else "EL1-executable", "UXN" if r.eff_uxn else "EL0-executable"))
    if r.fault and r.fault[0] != "access flag":
        out.append("=> %s fault at level %d (%s)" % r.fault)
    else:
        out.append("=> PA %#x" % r.pa)
        if r.fault:
            out.append("=> but an access would take an %s fault at level %d (%s)" % r.fault)
    return out


# ---------------------------------------------------------------------------
# The kernel's process-table mirror, PAGELAB_DEBUG_PROCS
# (kernel/src/proc/debug_table.rs, whose module doc is the reference).
#
# Layout version 1, little-endian, offsets in bytes:
#   header  0 u64 magic "PLPROCS\0"     8 u32 version (1)
#          12 u32 header_size (= 64 + 8*max_cpus)   16 u32 proc_size   20 u32 vma_size (40)
#          24 u32 max_procs  28 u32 max_vmas  32 u32 max_cpus  36 u32 name_len
#          40 u32 page_shift 44 u32 nr_procs  48 u32 unslotted (live, without a slot)
#          56 u64 updates    64 u32 running_pid[max_cpus], then u32 running_tid[max_cpus]
#   process record i at header_size + i*proc_size (proc_size = align8(48+name_len) + max_vmas*40):
#           0 u32 seq (odd: being written)  4 u32 state (0 free, 1 setting up, 2 live)
#           8 u32 pid  12 u32 ppid  16 u64 pgd (TTBR0 root PA)
#          24 u64 asid_slot (VA of the u64 generation<<16|asid)  32 u64 mm (VA of MmStruct)
#          40 u32 nr_vmas (> max_vmas: only max_vmas recorded)  44 u32 name_len (> name_len: truncated)
#          48 u8 name[name_len]   then vma[max_vmas]
#   VMA record: 0 u64 start  8 u64 end  16 u64 pgoff  24 u32 flags (VmFlags)  28 u32 file
#               32 u8 folio_order (largest folio = page size << order)
# pl-procs/pl-vmas read it with plain memory reads (symbol address from the ELF).
# ---------------------------------------------------------------------------

PROCS_SYMBOL = "PAGELAB_DEBUG_PROCS"
DT_MAGIC = int.from_bytes(b"PLPROCS\0", "little")
DT_VERSION = 1
DT_HEADER_FIXED = 64
DT_PROC_FIXED = 48
DT_VMA_SIZE = 40
DT_FREE, DT_SETUP, DT_LIVE = 0, 1, 2
# Field offsets, by the kernel's struct and field names (the GDB test checks
# them against the kernel's DWARF). Offsets past `name` depend on name_len.
DT_OFFSETS = {
    "DebugTable": dict(magic=0, version=8, header_size=12, proc_size=16, vma_size=20, max_procs=24,
                       max_vmas=28, max_cpus=32, name_len=36, page_shift=40, nr_procs=44, unslotted=48,
                       updates=56, running_pid=64),
    "DebugProc": dict(seq=0, state=4, pid=8, ppid=12, pgd=16, asid_slot=24, mm=32, nr_vmas=40,
                      name_len=44, name=48),
    "DebugVma": dict(start=0, end=8, pgoff=16, flags=24, file=28, folio_order=32),
}
_OT, _OP, _OV = DT_OFFSETS["DebugTable"], DT_OFFSETS["DebugProc"], DT_OFFSETS["DebugVma"]

# VmFlags (kernel/src/mm/mm_struct.rs), bit -> name.
VM_FLAG_NAMES = {0: "READ", 1: "WRITE", 2: "EXEC", 3: "SHARED", 5: "MAYWRITE", 10: "PFNMAP",
                 12: "UFFD_WP", 14: "IO", 20: "PFN_MKWRITE", 21: "FSDAX", 22: "NORESERVE", 28: "MIXEDMAP",
                 29: "HUGEPAGE", 30: "NOHUGEPAGE"}


class DebugTableError(Exception):
    """The table cannot be decoded (missing, unreadable, other layout)."""


def _u32(b, off):
    return int.from_bytes(b[off:off + 4], "little")


def _u64(b, off):
    return int.from_bytes(b[off:off + 8], "little")


def vm_flags_str(flags):
    """As the kernel's `Display for VmFlags`: names lowest bit first,
    unknown bits as one hex number, `none` for 0."""
    names = []
    rest = flags
    for b in range(32):
        if flags & (1 << b) and b in VM_FLAG_NAMES:
            names.append(VM_FLAG_NAMES[b])
            rest &= ~(1 << b)
    if rest:
        names.append("%#x" % rest)
    return "|".join(names) if names else "none"


def human_size(size):
    n, u = size_str(size)
    return "%d%s" % (n, u.strip())


def format_vma_line(v, page_size):
    """One VMA exactly as the kernel's `Vma::maps_line` (the console's `P maps`)."""
    f = v.flags
    perm = "".join(ch if f & (1 << b) else "-" for b, ch in ((0, "r"), (1, "w"), (2, "x")))
    perm += "s" if f & (1 << 3) else "p"
    line = "%#018x-%#018x %s %6s folio %4s %s" % (
        v.start, v.end, perm, human_size(v.end - v.start), human_size(page_size << v.folio_order),
        vm_flags_str(f))
    if v.file:
        line += " file %d pgoff %#x" % (v.file, v.pgoff)
    return line


class DtVma(object):
    def __init__(self, b, off=0):
        self.start = _u64(b, off + _OV["start"])
        self.end = _u64(b, off + _OV["end"])
        self.pgoff = _u64(b, off + _OV["pgoff"])
        self.flags = _u32(b, off + _OV["flags"])
        self.file = _u32(b, off + _OV["file"])
        self.folio_order = b[off + _OV["folio_order"]]


class DtProc(object):
    def __init__(self, slot, addr, b, name_len_max):
        self.slot = slot
        self.addr = addr
        self.seq = _u32(b, _OP["seq"])
        self.state = _u32(b, _OP["state"])
        self.pid = _u32(b, _OP["pid"])
        self.ppid = _u32(b, _OP["ppid"])
        self.pgd = _u64(b, _OP["pgd"])
        self.asid_slot = _u64(b, _OP["asid_slot"])
        self.mm = _u64(b, _OP["mm"])
        self.nr_vmas = _u32(b, _OP["nr_vmas"])
        self.name_len = _u32(b, _OP["name_len"])
        o = _OP["name"]
        raw = bytes(b[o:o + min(self.name_len, name_len_max)])
        self.name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        self.truncated = self.name_len > name_len_max
        self.vmas = []
        self.asid_value = None     # the u64 at asid_slot, if readable
        self.cpus = []             # (cpu, tid) running one of its tasks

    def shown_name(self):
        return self.name + ("..." if self.truncated else "")

    def matches(self, name):
        if self.truncated:
            return name.startswith(self.name)
        return name == self.name


class DtTable(object):
    pass


def read_debug_table(read, base):
    """Decodes the table at `base`. `read(addr, n)` returns n bytes of kernel
    memory (virtual addresses) or raises. Raises DebugTableError when the
    header is not a layout this file knows."""
    try:
        h = read(base, DT_HEADER_FIXED)
    except Exception as ex:
        raise DebugTableError("cannot read %s at %#x: %s" % (PROCS_SYMBOL, base, ex))
    t = DtTable()
    t.base = base
    t.magic = _u64(h, _OT["magic"])
    if t.magic != DT_MAGIC:
        raise DebugTableError("%s at %#x: magic %#018x is not %#018x (\"PLPROCS\\0\"): not pagelab's "
                              "process table, or its memory is not what the ELF says (wrong ELF for this "
                              "kernel?)" % (PROCS_SYMBOL, base, t.magic, DT_MAGIC))
    for f in ("version", "header_size", "proc_size", "vma_size", "max_procs", "max_vmas", "max_cpus",
              "name_len", "page_shift", "nr_procs", "unslotted"):
        setattr(t, f, _u32(h, _OT[f]))
    t.updates = _u64(h, _OT["updates"])
    if t.version != DT_VERSION:
        raise DebugTableError("%s layout version %d, but pagelab.py decodes version %d: use the "
                              "gdb/pagelab.py of this kernel's source tree" % (PROCS_SYMBOL, t.version, DT_VERSION))
    t.vma_off = _OP["name"] + ((t.name_len + 7) & ~7)
    problems = []
    if t.vma_size != DT_VMA_SIZE:
        problems.append("vma_size %d (want %d)" % (t.vma_size, DT_VMA_SIZE))
    if not (1 <= t.max_cpus <= 1024 and 1 <= t.max_procs <= 4096 and 1 <= t.max_vmas <= 65536
            and 1 <= t.name_len <= 4096):
        problems.append("implausible counts: %d CPUs, %d slots, %d VMAs, name %d bytes" % (
            t.max_cpus, t.max_procs, t.max_vmas, t.name_len))
    elif t.header_size != DT_HEADER_FIXED + 8 * t.max_cpus:
        problems.append("header_size %d (want %d for %d CPUs)" % (
            t.header_size, DT_HEADER_FIXED + 8 * t.max_cpus, t.max_cpus))
    elif t.proc_size != t.vma_off + t.max_vmas * DT_VMA_SIZE:
        problems.append("proc_size %d (want %d for %d VMAs and %d-byte names)" % (
            t.proc_size, t.vma_off + t.max_vmas * DT_VMA_SIZE, t.max_vmas, t.name_len))
    if t.page_shift not in GRANULE_NAMES:
        problems.append("page_shift %d" % t.page_shift)
    if problems:
        raise DebugTableError("%s layout does not match version %d as pagelab.py knows it: %s" % (
            PROCS_SYMBOL, DT_VERSION, "; ".join(problems)))
    t.page_size = 1 << t.page_shift
    r = read(base + _OT["running_pid"], 8 * t.max_cpus)
    t.running = [(_u32(r, 4 * c), _u32(r, 4 * (t.max_cpus + c))) for c in range(t.max_cpus)]
    t.procs = []
    t.notes = []
    t.setting_up = 0
    fixed = t.vma_off
    for i in range(t.max_procs):
        addr = base + t.header_size + i * t.proc_size
        b = read(addr, fixed)
        st = _u32(b, _OP["state"])
        if st == DT_FREE:
            continue
        p = DtProc(i, addr, b, t.name_len)
        if st == DT_SETUP:
            t.notes.append("slot %d (pid %d) is being set up: not listed" % (i, p.pid))
            t.setting_up += 1
            continue
        if st != DT_LIVE:
            t.notes.append("slot %d has unknown state %d: not listed" % (i, st))
            continue
        if p.seq & 1:
            t.notes.append("slot %d (pid %d %s) was being written when the kernel stopped (seq %d): "
                           "its record may be inconsistent" % (i, p.pid, p.shown_name(), p.seq))
        n = min(p.nr_vmas, t.max_vmas)
        if n:
            vb = read(addr + fixed, n * DT_VMA_SIZE)
            p.vmas = [DtVma(vb, k * DT_VMA_SIZE) for k in range(n)]
        if p.nr_vmas > t.max_vmas:
            t.notes.append("pid %d %s: %d VMAs, only the first %d are recorded (the slot holds %d)" % (
                p.pid, p.shown_name(), p.nr_vmas, t.max_vmas, t.max_vmas))
        if p.truncated:
            t.notes.append("pid %d: name is %d bytes, shown truncated to %d" % (p.pid, p.name_len, t.name_len))
        if p.asid_slot:
            try:
                p.asid_value = _u64(read(p.asid_slot, 8), 0)
            except Exception:
                t.notes.append("pid %d: cannot read its ASID slot at %#x" % (p.pid, p.asid_slot))
        t.procs.append(p)
    t.procs.sort(key=lambda p: p.pid)
    by_pid = dict((p.pid, p) for p in t.procs)
    for c, (pid, tid) in enumerate(t.running):
        if pid == 0:
            continue
        if pid in by_pid:
            by_pid[pid].cpus.append((c, tid))
        else:
            t.notes.append("cpu%d runs pid %d (tid %d), which has no record here" % (c, pid, tid))
    if t.unslotted:
        t.notes.insert(0, "OVERFLOW: %d live process%s got no slot (all %d slots were in use): not listed" % (
            t.unslotted, "" if t.unslotted == 1 else "es", t.max_procs))
    if t.nr_procs != len(t.procs) + t.setting_up + t.unslotted:
        t.notes.append("the header counts %d live processes, but %d are listed, %d being set up and %d "
                       "unslotted (stopped in the middle of a change?)" % (
                           t.nr_procs, len(t.procs), t.setting_up, t.unslotted))
    return t


PROCS_HEADER = "  PID  PPID NAME             PGD                ASID    GEN  VMAS CPU"


def format_procs(t):
    """pl-procs: the console's `ps` columns, plus the CPUs running its tasks."""
    lines = ["pagelab process table @ %#x (layout v%d): %d process%s, %d slots x %d VMAs, %s pages, "
             "%d updates" % (t.base, t.version, len(t.procs), "" if len(t.procs) == 1 else "es",
                             t.max_procs, t.max_vmas, GRANULE_NAMES[t.page_shift], t.updates)]
    lines.append(PROCS_HEADER)
    for p in t.procs:
        if p.asid_value is None:
            asid, gen = "?", "?"
        else:
            asid, gen = "%#06x" % (p.asid_value & 0xffff), "%d" % (p.asid_value >> 16)
        cpus = ",".join("cpu%d" % c for c, _ in p.cpus) or "-"
        lines.append("%5d %5d %-16s %#018x %-6s %4s %5d %s" % (
            p.pid, p.ppid, p.shown_name(), p.pgd, asid, gen, p.nr_vmas, cpus))
    running = ["cpu%d: pid %d tid %d" % (c, pid, tid) for c, (pid, tid) in enumerate(t.running) if pid]
    lines.append("running: " + (", ".join(running) if running else "no CPU runs a process's task"))
    lines += ["note: " + n for n in t.notes]
    return lines


def find_proc(t, spec):
    """A process by pid (a number) or name."""
    spec = spec.strip()
    if re.match(r"^\d+$", spec):
        for p in t.procs:
            if p.pid == int(spec):
                return p
    for p in t.procs:
        if p.matches(spec):
            return p
    known = ", ".join("%d %s" % (p.pid, p.shown_name()) for p in t.procs) or "none"
    raise DebugTableError("no process %r (processes: %s)" % (spec, known))


def format_vmas(t, p):
    lines = ["%s (pid %d, ppid %d, slot %d): %d VMAs" % (p.shown_name(), p.pid, p.ppid, p.slot, p.nr_vmas)]
    lines += [format_vma_line(v, t.page_size) for v in p.vmas]
    if p.nr_vmas > len(p.vmas):
        lines.append("OVERFLOW: %d more VMAs not recorded (the slot holds %d)" % (
            p.nr_vmas - len(p.vmas), t.max_vmas))
    if p.seq & 1:
        lines.append("note: the record was being written when the kernel stopped; it may be inconsistent")
    return lines


# ---------------------------------------------------------------------------
# Self-test (python3 gdb/pagelab.py --selftest): no gdb, no QEMU.
# ---------------------------------------------------------------------------

class FakeMem(object):
    """Sparse physical memory holding synthetic tables."""

    def __init__(self, page_shift, base=0x80000000):
        self.m = {}
        self.ps = page_shift
        self.next = base

    def alloc(self, size=None):
        size = size or (1 << self.ps)
        pa = self.next
        self.next += max(size, 1 << self.ps)
        return pa

    def read(self, pa, n):
        return [self.m.get(pa + 8 * i, 0) for i in range(n)]

    def write(self, pa, v):
        self.m[pa] = v


def fake_map(mem, hp, root, va, pa, level, attrs):
    """Map va -> pa with a leaf at `level`, creating tables as needed."""
    ps = hp.page_shift
    table = root
    for lv in range(hp.first_level, level):
        idx = va_index(va, hp.va_bits, ps, lv, hp.first_level)
        cur = mem.read(table + idx * 8, 1)[0]
        if cur & 3 == 3:
            table = desc_oa(cur, ps, hp)
        else:
            nxt = mem.alloc()
            mem.write(table + idx * 8, nxt | 3)
            table = nxt
    idx = va_index(va, hp.va_bits, ps, level, hp.first_level)
    mem.write(table + idx * 8, pa | attrs | (3 if level == 3 else 1))
    return table + idx * 8


def tcr_for(page_shift, tsz, upper=True, ips=5):
    tg1 = {12: 0b10, 14: 0b01, 16: 0b11}[page_shift]
    tg0 = {12: 0b00, 14: 0b10, 16: 0b01}[page_shift]
    tcr = (ips << 32)
    tcr |= (tsz << 16) | (tg1 << 30) if upper else tsz | (tg0 << 14)
    # The other half: walks disabled.
    tcr |= (1 << 7) if upper else (1 << 23)
    return tcr


# Physical reads through a debug server's monitor command: QEMU's HMP `xp`
# and OpenOCD's `mdd phys` both print `ADDRESS: WORD WORD ...` lines (QEMU's
# words with 0x, OpenOCD's without).
PHYS_BACKENDS = ("auto", "qemu", "xp", "openocd")


def phys_monitor_command(backend, pa, n):
    if backend == "xp":
        return "monitor xp /%dgx %#x" % (n, pa)
    if backend == "openocd":
        return "monitor mdd phys %#x %d" % (pa, n)
    raise ValueError("no monitor command for backend %r" % backend)


def parse_memory_dump(out, pa, n):
    """The n 64-bit words at pa from an `ADDRESS: WORD...` dump, or None if
    the dump does not hold them all (an error message, another address)."""
    vals = {}
    for line in out.splitlines():
        head, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            a = int(head.strip(), 16)
        except ValueError:
            continue
        for w in rest.split():
            try:
                vals[a] = int(w, 16) & MASK64
            except ValueError:
                break
            a += 8
    try:
        return [vals[pa + 8 * i] for i in range(n)]
    except KeyError:
        return None


SYSREG_NAMES = ("TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "SCTLR_EL1", "MAIR_EL1", "ESR_EL1", "FAR_EL1",
                "ID_AA64MMFR0_EL1", "ID_AA64MMFR2_EL1")


def selftest(verbose=False):
    failures = []
    count = [0]

    def check(name, cond, detail=""):
        count[0] += 1
        if not cond:
            failures.append("%s %s" % (name, detail))
        elif verbose:
            print("ok   %s" % name)

    # Granule math.
    for ps, va_bits, sl in [(12, 48, 0), (12, 39, 1), (12, 30, 2), (12, 52, -1),
                            (14, 48, 0), (14, 47, 1), (14, 36, 2), (14, 52, 0),
                            (16, 48, 1), (16, 42, 2), (16, 52, 1), (16, 29, 3)]:
        check("start_level %s %d-bit" % (GRANULE_NAMES[ps], va_bits),
              start_level(va_bits, ps) == sl, "got %d want %d" % (start_level(va_bits, ps), sl))
    check("4K shifts", [level_shift(12, lv) for lv in (0, 1, 2, 3)] == [39, 30, 21, 12])
    check("16K shifts", [level_shift(14, lv) for lv in (0, 1, 2, 3)] == [47, 36, 25, 14])
    check("64K shifts", [level_shift(16, lv) for lv in (1, 2, 3)] == [42, 29, 16])
    check("4K L-1 shift", level_shift(12, -1) == 48)
    check("bits per level", [bits_per_level(p) for p in (12, 14, 16)] == [9, 11, 13])
    check("16K 48-bit L0 has 2 entries", index_bits(48, 14, 0, 0) == 1)
    check("64K 48-bit L1 has 64 entries", index_bits(48, 16, 1, 1) == 6)
    check("4K 48-bit L0 has 512 entries", index_bits(48, 12, 0, 0) == 9)
    # Hand-computed table indices of VA 0xffff800000031234 (48-bit VA).
    tva = 0xffff800000031234
    check("4K indices", [va_index(tva, 48, 12, lv, 0) for lv in range(4)] == [256, 0, 0, 0x31])
    check("16K indices", [va_index(tva, 48, 14, lv, 0) for lv in range(4)] == [1, 0, 0, 12])
    check("64K indices", [va_index(tva, 48, 16, lv, 1) for lv in range(1, 4)] == [32, 0, 3])
    check("block sizes", [level_size(12, 1), level_size(12, 2), level_size(14, 2), level_size(16, 2)] ==
          [1 << 30, 1 << 21, 1 << 25, 1 << 29])
    check("blocks allowed 4K", [block_allowed(12, lv) for lv in (0, 1, 2, 3)] == [False, True, True, False])
    check("blocks allowed 4K DS", block_allowed(12, 0, ds=True))
    check("blocks allowed 16K", [block_allowed(14, lv) for lv in (0, 1, 2, 3)] == [False, False, True, False])
    check("blocks allowed 64K", [block_allowed(16, lv) for lv in (1, 2, 3)] == [False, True, False])
    check("blocks allowed 64K LPA", block_allowed(16, 1, lpa=True))
    check("level names 4-level", [level_name(lv, 0) for lv in range(4)] == ["PGD", "PUD", "PMD", "PTE"])
    check("level names 3-level", [level_name(lv, 1) for lv in range(1, 4)] == ["PGD", "PMD", "PTE"])
    check("size_str", [size_str(s) for s in (4096, 1 << 30, 0x160000, 12)] ==
          [(4, "K"), (1, "G"), (1408, "K"), (12, " ")])

    # TCR parsing: the live pagelab value.
    hp = HalfParams(0x14b5103510, True)
    check("TCR T1SZ", hp.tsz == 16 and hp.va_bits == 48 and hp.page_shift == 12 and hp.first_level == 0)
    check("TCR IPS", hp.ips == 4 and hp.pa_bits == 44 and not hp.epd)
    hp0 = HalfParams(0x14b5103510, False)
    check("TCR T0SZ", hp0.tsz == 16 and hp0.page_shift == 12 and hp0.epd == 0)
    check("TG0 encodings", [HalfParams(tg << 14 | 16, False).page_shift for tg in (0, 1, 2)] == [12, 16, 14])
    check("TG1 encodings", [HalfParams(tg << 30 | 16 << 16, True).page_shift for tg in (1, 2, 3)] == [14, 12, 16])
    check("TG1=0 reserved", HalfParams(16 << 16, True).page_shift is None)

    # Descriptor decoding (values seen on the live kernel).
    d = Desc(0x00600000400b1703, 3)
    check("page desc", d.kind == "page" and d.oa == 0x400b1000 and d.pxn and d.uxn and d.af and d.sh == 3
          and not d.read_only and not d.el0 and d.attr_idx == 0)
    d = Desc(0x0060000040000701, 1)
    check("1G block desc", d.kind == "block" and d.oa == 0x40000000 and d.size == 1 << 30)
    check("ptdump columns", ("%#018x-%#018x %9d%s %-5s  %s" % (
        0xffff000040000000, 0xffff000080000000, 1, "G", "PUD", ptdump_attrs(d))) ==
        "0xffff000040000000-0xffff000080000000         1G PUD          RW NX SHD AF        BLK UXN    MEM/NORMAL")
    d = Desc(0x00600000400b1703 | 0x80 | 0x40 | (1 << 55) | (1 << 57), 3)
    check("ro EL0 sw bits", d.read_only and d.el0 and d.sw == ["SW_DIRTY", "SW_UFFD_WP"])
    check("block at L3 reserved", Desc(0x40000701, 3).kind == "reserved")
    check("block at L0 reserved (4K)", Desc(0x40000701, 0).kind == "reserved")
    check("table desc", Desc(0x400c2003, 0).kind == "table" and Desc(0x400c2003, 0).oa == 0x400c2000)
    check("empty desc", Desc(0, 2).kind == "none")
    np = Desc((1 << 1) | (0x123 << 12) | (1 << 4), 3)
    check("non-present swap", np.kind == "invalid" and "slot 0x123 exclusive" in np.nonpresent_str())
    hp64 = HalfParams(tcr_for(16, 12, ips=6), True)
    check("64K 52-bit OA", desc_oa(0x0000000012340000 | (0xa << 12) | 3, 16, hp64) == 0xa000012340000)
    hpds = HalfParams(tcr_for(12, 12, ips=6) | (1 << 59), True)
    check("LPA2 OA", desc_oa((3 << 8) | (1 << 49) | 0x1000 | 3, 12, hpds) == (3 << 50) | (1 << 49) | 0x1000)
    hpds = HalfParams(tcr_for(12, 12, ips=5) | (1 << 59), True)
    check("LPA2 OA, 48-bit IPS", desc_oa((3 << 8) | (1 << 49) | 0x1000 | 3, 12, hpds) == (1 << 49) | 0x1000)
    check("LPA2 start level -1", hpds.first_level == -1 and hpds.first_entries == 16 and not hpds.problems())
    check("T1SZ=12 needs DS or 64K", HalfParams(tcr_for(12, 12), True).problems() != [] and
          HalfParams(tcr_for(16, 12), True).problems() == [])
    check("64K L1 block needs PAMax 52", HalfParams(tcr_for(16, 16), True, mmfr0=6).lpa and
          not HalfParams(tcr_for(16, 16, ips=6), True, mmfr0=5).lpa)
    check("mair names", mair_attr_name(0x04) == "Device-nGnRE" and mair_attr_name(0xff).startswith("Normal"))

    # Synthetic walks for every granule and several VA sizes, both halves.
    leaf_attrs = 0x0060000000000700  # PXN UXN AF SH=inner AttrIndx 0
    for ps in (12, 14, 16):
        for tsz in (16, 25, 34 if ps != 16 else 22):
            for upper in (True, False):
                tcr = tcr_for(ps, tsz, upper)
                hp = HalfParams(tcr, upper)
                mem = FakeMem(ps)
                root = mem.alloc(max(hp.first_entries * 8, 64))
                ttbr = root | (0x42 << 48)
                regs = {"TCR_EL1": tcr, "TTBR1_EL1" if upper else "TTBR0_EL1": ttbr, "SCTLR": 1}
                base = hp.region_base()
                top = base + (1 << hp.va_bits) - 1 if not upper else MASK64
                tag = "%s T%dSZ=%d %s" % (GRANULE_NAMES[ps], 1 if upper else 0, tsz, "upper" if upper else "lower")
                # A page near the top of the range and a block per allowed level.
                page_va = (top & ~((1 << ps) - 1)) - (5 << ps)
                fake_map(mem, hp, root, page_va, 0x40000000 + (7 << ps), 3, leaf_attrs)
                r = walk(page_va + 0x123, regs, mem.read)
                check("walk page " + tag, r.pa == 0x40000000 + (7 << ps) + 0x123 and r.fault is None,
                      "pa=%s fault=%s" % (r.pa and hex(r.pa), r.fault))
                check("walk levels " + tag, [s.level for s in r.steps] == list(range(hp.first_level, 4)))
                for lv in range(max(hp.first_level, 1), 3):
                    if not block_allowed(ps, lv):
                        continue
                    bsz = level_size(ps, lv)
                    bva = base + bsz * 3 if bsz * 4 <= (1 << hp.va_bits) else None
                    if bva is None:
                        continue
                    bpa = bsz * 2 if bsz * 2 < (1 << 40) else bsz
                    fake_map(mem, hp, root, bva, bpa, lv, leaf_attrs)
                    r = walk(bva + bsz - 8, regs, mem.read)
                    check("walk block L%d %s" % (lv, tag), r.pa == bpa + bsz - 8 and r.leaf.kind == "block",
                          "pa=%s fault=%s" % (r.pa and hex(r.pa), r.fault))
                # Unmapped neighbour page: translation fault at level 3.
                r = walk(page_va - (1 << ps), regs, mem.read)
                check("fault L3 " + tag, r.fault and r.fault[:2] == ("translation", 3), str(r.fault))
                # Out of range VA.
                if tsz > 16:
                    bad = (base - (1 << 40)) & MASK64 if upper else (1 << hp.va_bits)
                    r = walk(bad, regs, mem.read)
                    check("out-of-range " + tag, r.fault and r.fault[0] == "translation" and r.pa is None)
                # The other half is disabled by EPD.
                r = walk((~page_va) & MASK64, regs, mem.read)
                check("EPD " + tag, r.fault and "EPD" in r.fault[2], str(r.fault))
                # ptdump sees the page and the blocks.
                lines, leaves, ranges, tables = ptdump(upper, regs, mem.read)
                check("ptdump " + tag, leaves >= 1 and ranges == len(lines) and any(
                    ln.startswith("%#018x-" % page_va) for ln in lines), "\n".join(lines))
    # Access flag fault and table attributes.
    mem = FakeMem(12)
    tcr = tcr_for(12, 16, True)
    hp = HalfParams(tcr, True)
    root = mem.alloc()
    regs = {"TCR_EL1": tcr, "TTBR1_EL1": root}
    va = 0xffff800000010000
    slot = fake_map(mem, hp, root, va, 0x40010000, 3, 0x0060000000000300)  # AF=0
    r = walk(va, regs, mem.read)
    check("access flag fault", r.fault and r.fault[:2] == ("access flag", 3) and r.pa == 0x40010000)
    mem.write(root + 256 * 8, mem.read(root + 256 * 8, 1)[0] | (1 << 62) | (1 << 59))
    mem.write(slot, mem.read(slot, 1)[0] | 0x400)
    r = walk(va, regs, mem.read)
    check("APTable/PXNTable", r.fault is None and r.eff_ro and r.eff_pxn)
    # Merging in ptdump: 16 contiguous pages with equal attributes are one line.
    for i in range(16):
        fake_map(mem, hp, root, 0xffff800000100000 + i * 4096, 0x40100000 + i * 4096, 3, 0x0060000000000700)
    lines, leaves, ranges, tables = ptdump(True, regs, mem.read, PAGELAB_TTBR1_MARKERS)
    check("ptdump merge", "0xffff800000100000-0xffff800000110000        64K PTE          RW NX SHD AF"
          "            UXN    MEM/NORMAL" in lines, "\n".join(lines))
    check("ptdump markers", lines[:3] == ["---[ Linear Mapping start ]---", "---[ MMIO start ]---",
                                          "---[ Kernel Image start ]---"], "\n".join(lines[:3]))
    check("ptdump counts", leaves == 17 and tables == 4, "%d %d" % (leaves, tables))

    # ESR decoding.
    e = decode_esr(0x9600004f)
    check("ESR 0x9600004f", e.ec == 0x25 and e.is_data and e.fault_kind == "permission"
          and e.fault_level == 3 and e.wnr == 1 and e.il == 1, "\n".join(e.lines))
    check("ESR 0x9600004f text", "permission fault, level 3" in "\n".join(e.lines) and "WnR=1" in "\n".join(e.lines))
    e = decode_esr(0x96000006)
    check("ESR 0x96000006", e.fault_kind == "translation" and e.fault_level == 2 and e.wnr == 0)
    e = decode_esr(0x96000004)
    check("ESR translation L0", e.fault_text == "translation fault, level 0")
    e = decode_esr(0x8600000f)
    check("IA same EL permission L3", e.ec == 0x21 and e.fault_level == 3 and not e.is_data)
    e = decode_esr(0x82000006)
    check("IA lower EL translation L2", e.ec == 0x20 and e.fault_level == 2)
    for fsc, kind, level in [(0x29, "address size", -1), (0x2b, "translation", -1),
                             (0x13, "synchronous external abort on table walk", -1),
                             (0x0a, "access flag", 2), (0x0c, "permission", 0), (0x00, "address size", 0),
                             (0x2a, "translation", -2)]:
        k, lv, _ = fault_status(fsc)
        check("FSC %#x" % fsc, (k, lv) == (kind, level), "%s %s" % (k, lv))
    check("FSC alignment", fault_status(0x21)[1] is None and fault_status(0x21)[0] == "alignment fault")
    e = decode_esr((0x24 << 26) | (1 << 24) | (3 << 22) | (5 << 16) | (1 << 15) | (1 << 10) | (1 << 7) | 0x05)
    check("DA syndrome", e.isv and e.sas == 3 and e.srt == 5 and e.fnv and e.s1ptw and not e.wnr
          and e.fault_level == 1 and "8-byte access" in "\n".join(e.lines) and "x5" in "\n".join(e.lines))
    e = decode_esr((0x25 << 26) | (1 << 25) | (1 << 8) | (1 << 6) | 0x07)
    check("DA CM", e.cm == 1 and "cache maintenance" in "\n".join(e.lines))
    e = decode_esr(0x56000042)
    check("SVC", e.ec == 0x15 and "imm16 0x42" in "\n".join(e.lines))
    e = decode_esr(0xf2000000 | 0x1234)
    check("BRK", e.ec == 0x3c and "0x1234" in "\n".join(e.lines))
    e = decode_esr(0x02000000)
    check("Unknown EC", e.ec == 0 and e.ec_name == "Unknown reason")
    e = decode_esr((0x18 << 26) | (1 << 25) | (3 << 20) | (0 << 17) | (0 << 14) | (2 << 10) | (3 << 5) | (0 << 1) | 1)
    check("MRS trap", "MRS x3, S3_0_C2_C0_0" in "\n".join(e.lines), "\n".join(e.lines))

    # gva2gpa parsing.
    check("gva2gpa mapped", parse_gva2gpa("gpa: 0x40080000\r\n") == 0x40080000)
    check("gva2gpa unmapped", parse_gva2gpa("Unmapped\r\n") is None)
    try:
        parse_gva2gpa("invalid char 'z' in expression")
        check("gva2gpa garbage", False)
    except ValueError:
        check("gva2gpa garbage", True)

    # The process-table mirror, against a table packed by hand from the
    # layout in kernel/src/proc/debug_table.rs (offsets written out here).
    import struct

    def pack_table(procs, max_procs=4, max_vmas=3, max_cpus=2, name_len=8, running=(), unslotted=0,
                   magic=DT_MAGIC, version=1, vma_size=40, header_size=None):
        hs = 64 + 8 * max_cpus if header_size is None else header_size
        psz = 48 + name_len + max_vmas * 40
        mem = bytearray(hs + max_procs * psz)
        struct.pack_into("<QIIIIIIIIIIIIQ", mem, 0, magic, version, hs, psz, vma_size, max_procs, max_vmas,
                         max_cpus, name_len, 12, len(procs) + unslotted, unslotted, 0, 77)
        for c, (pid, tid) in enumerate(running):
            struct.pack_into("<I", mem, 64 + 4 * c, pid)
            struct.pack_into("<I", mem, 64 + 4 * max_cpus + 4 * c, tid)
        for slot, pr in procs.items():
            o = hs + slot * psz
            name = pr["name"].encode()
            struct.pack_into("<IIIIQQQII", mem, o, pr.get("seq", 2), pr.get("state", 2), pr["pid"], pr["ppid"],
                             pr["pgd"], pr.get("asid_at", 0), 0xffff000040001000, len(pr["vmas"]) + pr.get("extra", 0),
                             len(name))
            mem[o + 48:o + 48 + min(len(name), name_len)] = name[:name_len]
            for k, (s, e, fl, fo, fi, pg) in enumerate(pr["vmas"][:max_vmas]):
                struct.pack_into("<QQQIIB", mem, o + 48 + name_len + 40 * k, s, e, pg, fl, fi, fo)
        return mem

    BASE = 0xffff800000100000

    def reader(mem, extra=None):
        def read(addr, n):
            if extra and addr in extra:
                return extra[addr][:n]
            off = addr - BASE
            if off < 0 or off + n > len(mem):
                raise ValueError("unreadable %#x" % addr)
            return bytes(mem[off:off + n])
        return read

    RW = 0x1 | 0x2 | 0x20
    agent = (0x400000, 0x404000, 0x1 | 0x4 | 0x400, 0, 0, 0)
    procs = {1: dict(pid=1, ppid=0, name="A", pgd=0x41234000, asid_at=0xffff000050000010,
                     vmas=[agent, (0x1000000000, 0x1000010000, RW, 9, 0, 0),
                           (0x1000011000, 0x1000012000, 0x1 | 0x8, 0, 3, 2)]),
             3: dict(pid=2, ppid=1, name="child_with_a_long_name", pgd=0x45000000, extra=5,
                     vmas=[agent, (0x1000000000, 0x1000010000, RW | 0x40000000, 0, 0, 0),
                           (0x1000020000, 0x1000030000, 0x1 | 0x80000000, 0, 0, 0)]),
             2: dict(pid=9, ppid=0, name="half", pgd=0x46000000, state=1, vmas=[])}
    mem = pack_table(procs, running=[(0, 0), (2, 17)], unslotted=1)
    t = read_debug_table(reader(mem, {0xffff000050000010: (3 << 16 | 0x2a).to_bytes(8, "little")}), BASE)
    check("debug table: live slots listed by pid", [(p.pid, p.slot) for p in t.procs] == [(1, 1), (2, 3)],
          [(p.pid, p.slot) for p in t.procs])
    a, c = t.procs
    check("debug table: pid/ppid/pgd/name", (a.ppid, a.pgd, a.name, c.ppid, c.pgd) == (0, 0x41234000, "A", 1, 0x45000000))
    check("debug table: ASID read through its slot", a.asid_value == (3 << 16 | 0x2a) and c.asid_value is None)
    check("debug table: running CPU", a.cpus == [] and c.cpus == [(1, 17)], (a.cpus, c.cpus))
    check("debug table: truncated name", c.truncated and c.shown_name() == "child_wi..." and c.matches("child_with_a_long_name"))
    check("debug table: VMA overflow kept the count", c.nr_vmas == 8 and len(c.vmas) == 3)
    lines = format_procs(t)
    text = "\n".join(lines)
    check("pl-procs: A row", "    1     0 A                0x0000000041234000 0x002a    3     3 -" in lines, text)
    check("pl-procs: child row (no ASID yet, on cpu1)",
          "    2     1 child_wi...      0x0000000045000000 ?         ?     8 cpu1" in lines, text)
    check("pl-procs: header matches the console's ps", lines[1].startswith(
        "  PID  PPID NAME             PGD                ASID    GEN  VMAS"), lines[1])
    check("pl-procs: overflow and set-up slot reported",
          "OVERFLOW: 1 live process got no slot" in text and "slot 2 (pid 9) is being set up" in text
          and "8 VMAs, only the first 3 are recorded" in text, text)
    check("pl-procs: running line", "running: cpu1: pid 2 tid 17" in text, text)
    check("pl-procs: counts consistent", "the header counts" not in text, text)
    v = format_vmas(t, a)
    check("pl-vmas: lines as the kernel's Vma::maps_line", v[1:] == [
        "0x0000000000400000-0x0000000000404000 r-xp    16K folio   4K READ|EXEC|PFNMAP",
        "0x0000001000000000-0x0000001000010000 rw-p    64K folio   2M READ|WRITE|MAYWRITE",
        "0x0000001000011000-0x0000001000012000 r--s     4K folio   4K READ|SHARED file 3 pgoff 0x2"], "\n".join(v))
    v = format_vmas(t, c)
    check("pl-vmas: flags decode, unknown bits, overflow line",
          v[2].endswith("READ|WRITE|MAYWRITE|NOHUGEPAGE") and v[3].endswith("READ|0x80000000")
          and v[-1] == "OVERFLOW: 5 more VMAs not recorded (the slot holds 3)", "\n".join(v))
    # The same literals as the kernel's own unit test (mm_struct.rs flag_names_and_maps_lines).
    class V(object):
        pass
    x = V()
    x.start, x.end, x.flags, x.folio_order, x.file, x.pgoff = 0x1000000000, 0x1000010000, RW, 9, 0, 0
    check("maps line == kernel test literal (4K)", format_vma_line(x, 4096) ==
          "0x0000001000000000-0x0000001000010000 rw-p    64K folio   2M READ|WRITE|MAYWRITE")
    x.flags, x.folio_order, x.file, x.pgoff = 0x1 | 0x8, 0, 3, 2
    check("maps line == kernel test literal (16K, file)", format_vma_line(x, 16384) ==
          "0x0000001000000000-0x0000001000010000 r--s    64K folio  16K READ|SHARED file 3 pgoff 0x2")
    check("vm flags: none / unknown", vm_flags_str(0) == "none" and vm_flags_str(0x80000014) == "EXEC|0x80000010")
    check("find_proc by pid and name", find_proc(t, "2") is c and find_proc(t, "A") is a)
    try:
        find_proc(t, "nosuch")
        check("find_proc unknown", False)
    except DebugTableError as ex:
        check("find_proc unknown", "1 A" in str(ex), str(ex))
    # Seq odd: the record is flagged, not silently trusted.
    mem2 = pack_table({0: dict(pid=4, ppid=0, name="W", pgd=0x1000, seq=5, vmas=[agent])})
    t2 = read_debug_table(reader(mem2), BASE)
    check("debug table: odd seq reported", any("being written" in n for n in t2.notes), t2.notes)
    # Header problems give clear errors.
    for what, kw, want in [("magic", dict(magic=0x1234), "is not"), ("version", dict(version=2), "version 2"),
                           ("vma size", dict(vma_size=48), "vma_size 48"),
                           ("header size", dict(header_size=100), "header_size 100")]:
        try:
            read_debug_table(reader(pack_table({}, **kw)), BASE)
            check("debug table: bad %s refused" % what, False)
        except DebugTableError as ex:
            check("debug table: bad %s refused" % what, want in str(ex), str(ex))
    try:
        read_debug_table(reader(bytearray(8)), BASE)
        check("debug table: unreadable refused", False)
    except DebugTableError as ex:
        check("debug table: unreadable refused", "cannot read" in str(ex), str(ex))

    # Monitor dumps: QEMU's `xp /3gx` and OpenOCD's `mdd phys` (its
    # target_handle_md_output: "0x%8.8x: " then "%16.16x " words).
    qemu_xp = ("0000000040001000: 0x0000000040002003 0x0000000000000000\n"
               "0000000040001010: 0x00e8000041200401\n")
    check("xp dump", parse_memory_dump(qemu_xp, 0x40001000, 3) == [0x40002003, 0, 0x00e8000041200401])
    check("xp dump, offset start", parse_memory_dump(qemu_xp, 0x40001008, 2) == [0, 0x00e8000041200401])
    check("xp dump too short", parse_memory_dump(qemu_xp, 0x40001000, 4) is None)
    ocd = "0x40001000: 0000000040002003 0000000000000000 00e8000041200401 \n"
    check("openocd mdd dump", parse_memory_dump(ocd, 0x40001000, 3) == [0x40002003, 0, 0x00e8000041200401])
    check("error text is no dump", parse_memory_dump("Cannot access memory\n", 0x1000, 1) is None and
          parse_memory_dump("unknown command: 'mdd'\n", 0x1000, 1) is None)
    check("another address is no dump", parse_memory_dump(ocd, 0x50000000, 1) is None)
    check("monitor commands", phys_monitor_command("xp", 0x1000, 2) == "monitor xp /2gx 0x1000" and
          phys_monitor_command("openocd", 0x1000, 2) == "monitor mdd phys 0x1000 2")

    for f in failures:
        print("FAIL " + f)
    print("pagelab.py selftest: %d checks, %d failed" % (count[0], len(failures)))
    return not failures


# ---------------------------------------------------------------------------
# GDB side.
# ---------------------------------------------------------------------------

if gdb is not None:

    def _execute(cmd):
        return gdb.execute(cmd, to_string=True)

    # pl-sysreg values: they win over what the server says.
    SYSREG_OVERRIDES = {}

    def read_reg(*names):
        """First readable register among `names` (int), or None."""
        for n in names:
            if n.upper() in SYSREG_OVERRIDES:
                return SYSREG_OVERRIDES[n.upper()]
        for n in names:
            try:
                v = gdb.selected_frame().read_register(n)
                return int(v) & MASK64
            except Exception:
                pass
            try:
                v = gdb.parse_and_eval("$" + n)
                if v.type.code == gdb.TYPE_CODE_VOID:
                    continue
                return int(v) & MASK64
            except Exception:
                pass
        return None

    def need_reg(*names):
        v = read_reg(*names)
        if v is None:
            raise gdb.GdbError("cannot read %s from the target (is the target connected and stopped? "
                               "A server that does not expose it, like OpenOCD: give it with "
                               "pl-sysreg %s VALUE)" % (" / ".join(names), next((n for n in names if "_EL" in n), names[0])))
        return v

    def current_el():
        cpsr = read_reg("cpsr", "CPSR", "pstate")
        ce = read_reg("CurrentEL")
        if ce is not None:
            return (ce >> 2) & 3
        if cpsr is not None:
            return (cpsr >> 2) & 3
        return None

    def live_regs():
        regs = {
            "SCTLR": need_reg("SCTLR", "SCTLR_EL1"),
            "TCR_EL1": need_reg("TCR_EL1", "TCR"),
            "TTBR0_EL1": need_reg("TTBR0_EL1", "TTBR0"),
            "TTBR1_EL1": need_reg("TTBR1_EL1", "TTBR1"),
        }
        for names in (("MAIR_EL1", "MAIR"), ("ID_AA64MMFR0_EL1",), ("ID_AA64MMFR2_EL1",)):
            v = read_reg(*names)
            if v is not None:
                regs[names[0]] = v
        return regs

    # pl-phys: which route physical reads take ("auto" picks the first that
    # works and remembers it until the connection ends, pl-phys is given, or
    # the remembered route stops working).
    PHYS = {"mode": "auto", "found": None}

    def _forget_route(*_):
        PHYS["found"] = None

    for _ev in ("connection_removed", "exited"):
        if hasattr(gdb.events, _ev):
            getattr(gdb.events, _ev).connect(_forget_route)

    class PhysMem(object):
        """Context manager for physical reads. With QEMU's packet: physical
        memory mode, always switched back. With a monitor route (QEMU's `xp`,
        OpenOCD's `mdd phys`) nothing is switched. Reads are cached for the
        duration of one command."""
        depth = 0
        packet = False
        route = None    # "qemu", "xp", "openocd", or None (auto, still looking)

        def __init__(self):
            self.cache = {}
            self.use_x = False

        @staticmethod
        def _try_packet():
            try:
                out = _execute("maint packet Qqemu.PhyMemMode:1")
            except gdb.error as ex:
                return "cannot switch QEMU to physical memory mode: %s" % ex
            if '"OK"' not in out:
                try:
                    _execute("maint packet Qqemu.PhyMemMode:0")
                except gdb.error:
                    pass
                return "the server refused Qqemu.PhyMemMode:1 (reply %s)" % out.strip().splitlines()[-1:]
            return None

        def __enter__(self):
            if PhysMem.depth == 0:
                mode = PHYS["mode"] if PHYS["mode"] != "auto" else (PHYS["found"] or "auto")
                PhysMem.packet = False
                if mode in ("qemu", "auto"):
                    err = self._try_packet()
                    if err is None:
                        PhysMem.packet = True
                        PHYS["found"] = "qemu"
                        self._flush()
                    elif PHYS["mode"] == "qemu":
                        raise gdb.GdbError(err + "; is the remote QEMU's gdbstub? (pl-phys lists the other routes)")
                    else:
                        # auto: the remembered packet no longer works (another
                        # server now): look again.
                        PHYS["found"] = None
                        mode = "auto"
                PhysMem.route = "qemu" if PhysMem.packet else (mode if mode != "auto" else None)
            PhysMem.depth += 1
            return self

        def __exit__(self, *exc):
            PhysMem.depth -= 1
            if PhysMem.depth == 0 and PhysMem.packet:
                PhysMem.packet = False
                try:
                    _execute("maint packet Qqemu.PhyMemMode:0")
                finally:
                    self._flush()
            return False

        @staticmethod
        def _flush():
            for c in ("maint flush dcache", "maint flush-dcache"):
                try:
                    _execute(c)
                    return
                except gdb.error:
                    pass

        def _read_monitor(self, route, pa, n):
            try:
                out = _execute(phys_monitor_command(route, pa, n))
            except gdb.error as ex:
                out = str(ex)
            vals = parse_memory_dump(out, pa, n)
            if vals is None:
                raise gdb.MemoryError("%s: %s" % (phys_monitor_command(route, pa, n),
                                                  (out.strip().splitlines() or ["no reply"])[-1]))
            return vals

        def _read_raw(self, pa, n):
            if PhysMem.route is None:
                # auto without the packet: the first monitor route that reads.
                errs = []
                for route in ("xp", "openocd"):
                    try:
                        vals = self._read_monitor(route, pa, n)
                    except gdb.MemoryError as ex:
                        errs.append(str(ex))
                        continue
                    PhysMem.route = PHYS["found"] = route
                    return vals
                raise gdb.MemoryError("no physical-memory route works (QEMU packet refused; %s)" % "; ".join(errs))
            if PhysMem.route != "qemu":
                try:
                    return self._read_monitor(PhysMem.route, pa, n)
                except gdb.MemoryError:
                    if PHYS["mode"] != "auto":
                        raise
                    # The remembered monitor route failed: look again once.
                    PhysMem.route = PHYS["found"] = None
                    return self._read_raw(pa, n)
            if not self.use_x:
                try:
                    data = bytes(gdb.selected_inferior().read_memory(pa, 8 * n))
                    return [int.from_bytes(data[8 * i:8 * i + 8], "little") for i in range(n)]
                except gdb.MemoryError:
                    raise
                except Exception:
                    self.use_x = True
            vals = []
            out = _execute("x/%dgx %#x" % (n, pa))
            for line in out.splitlines():
                vals += [int(w, 16) for w in line.split(":", 1)[1].split()]
            return vals[:n]

        def read_bytes(self, pa, n):
            """n bytes at pa (any alignment)."""
            if PhysMem.route == "qemu":
                return bytes(gdb.selected_inferior().read_memory(pa, n))
            lo = pa & ~7
            words = self.read(lo, (pa + n - lo + 7) // 8)
            data = b"".join(w.to_bytes(8, "little") for w in words)
            return data[pa - lo:pa - lo + n]

        def read(self, pa, n):
            key = (pa, n)
            if key not in self.cache:
                try:
                    self.cache[key] = self._read_raw(pa, n)
                except gdb.MemoryError as ex:
                    raise gdb.GdbError("cannot read physical memory at %#x: %s" % (pa, ex))
            return self.cache[key]

    class PlPhys(gdb.Command):
        """How the pl-* commands read physical memory.
Usage: pl-phys [auto|qemu|xp|openocd]
  qemu     QEMU's gdbstub packet Qqemu.PhyMemMode:1 (fastest; the default's first try)
  xp       QEMU's monitor command `xp` (a QEMU whose gdbstub lacks the packet)
  openocd  OpenOCD's `monitor mdd phys` (JTAG on a real board)
  auto     the first of these that works, remembered (the default)
Without an argument: the setting and the route auto found."""

        def __init__(self):
            super(PlPhys, self).__init__("pl-phys", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            a = arg.strip().lower()
            if a:
                if a not in PHYS_BACKENDS:
                    raise gdb.GdbError("pl-phys: unknown route %r (%s)" % (a, "|".join(PHYS_BACKENDS)))
                PHYS["mode"], PHYS["found"] = a, None
            found = PHYS["found"] or "not yet chosen"
            print("pl-phys: %s%s" % (PHYS["mode"], " (found: %s)" % found if PHYS["mode"] == "auto" else ""))

    class PlSysreg(gdb.Command):
        """Give a system register that the debug server does not expose.
Usage: pl-sysreg                 list the values given
       pl-sysreg NAME VALUE      use VALUE for NAME (e.g. TTBR1_EL1, TCR_EL1)
       pl-sysreg NAME -          forget it (read it from the server again)
       pl-sysreg -               forget them all
OpenOCD's gdb server has no TTBRn/TCR/SCTLR/MAIR; the console's `info`
prints TTBR1/TCR/MAIR/SCTLR (the same on every CPU) and `ps` each process's
PGD and ASID for TTBR0. The pl-* commands then use these values instead of
the live ones, and say so."""

        def __init__(self):
            super(PlSysreg, self).__init__("pl-sysreg", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            words = arg.split(None, 1)
            if words == ["-"]:
                SYSREG_OVERRIDES.clear()
            elif words:
                name = words[0].upper()
                if name not in SYSREG_NAMES:
                    raise gdb.GdbError("pl-sysreg: unknown register %r (%s)" % (words[0], ", ".join(SYSREG_NAMES)))
                if len(words) < 2:
                    raise gdb.GdbError("usage: pl-sysreg NAME VALUE|-")
                if words[1].strip() == "-":
                    SYSREG_OVERRIDES.pop(name, None)
                else:
                    SYSREG_OVERRIDES[name] = eval_addr(words[1])
            if not SYSREG_OVERRIDES:
                print("pl-sysreg: none given; every register is read from the server")
            for k in sorted(SYSREG_OVERRIDES):
                print("pl-sysreg: %s = %#x (given)" % (k, SYSREG_OVERRIDES[k]))

    def _info_address(name):
        try:
            out = _execute("info address %s" % name)
        except gdb.error as ex:
            raise gdb.GdbError(str(ex))
        m = re.search(r"is at (?:address )?(0x[0-9a-fA-F]+)", out)
        if not m:
            m = re.search(r"(0x[0-9a-fA-F]+)", out)
        if not m:
            raise gdb.GdbError("cannot find the address of %s: %s" % (name, out.strip()))
        return int(m.group(1), 16)

    def eval_addr(expr):
        """Evaluate an address expression. Kernel symbols are linker symbols
        without debug info, which gdb's Rust mode cannot take the address of,
        so C is tried as well; `&sym` falls back to `info address sym`."""
        expr = expr.strip()
        try:
            return int(expr, 0) & MASK64
        except ValueError:
            pass
        errs = []
        try:
            return int(gdb.parse_and_eval(expr)) & MASK64
        except gdb.error as ex:
            errs.append(str(ex))
        lang = gdb.parameter("language")
        try:
            gdb.execute("set language c", to_string=True)
            try:
                v = gdb.parse_and_eval(expr)
                if v.type.code == gdb.TYPE_CODE_PTR:
                    v = v.cast(gdb.lookup_type("unsigned long"))
                return int(v) & MASK64
            except gdb.error as ex:
                errs.append(str(ex))
        finally:
            gdb.execute("set language %s" % lang, to_string=True)
        m = re.match(r"^&?\s*([A-Za-z_][\w:$.]*)\s*(?:([+-])\s*(\S+))?$", expr)
        if m:
            a = _info_address(m.group(1))
            if m.group(2):
                off = int(m.group(3), 0)
                a = a + off if m.group(2) == "+" else a - off
            return a & MASK64
        raise gdb.GdbError("cannot evaluate %r: %s" % (expr, "; ".join(errs)))

    def pl_walk_result(va):
        regs = live_regs()
        with PhysMem() as pm:
            return walk(va, regs, pm.read), regs

    def pl_translate(va):
        """PA that the live stage-1 tables give `va`, or None if it does not translate."""
        r, _ = pl_walk_result(va)
        return r.translated()

    def qemu_gva2gpa(va):
        """QEMU's own translation (monitor gva2gpa): PA or None if unmapped."""
        out = _execute("monitor gva2gpa %#x" % va)
        return parse_gva2gpa(out)

    def _el_warning():
        notes = []
        el = current_el()
        if el is not None and el != 1:
            notes.append("note: the CPU is at EL%d; these commands walk the EL1&0 regime (TTBRn_EL1/TCR_EL1)" % el)
        if SYSREG_OVERRIDES:
            notes.append("note: given with pl-sysreg, not read live: %s" % ", ".join(sorted(SYSREG_OVERRIDES)))
        return "\n".join(notes) or None

    class PlWalk(gdb.Command):
        """Walk the live stage-1 EL1&0 tables for a virtual address.
Usage: pl-walk ADDR   (ADDR: number or expression, e.g. &__rodata_start)
Uses only TTBRn_EL1/TCR_EL1/SCTLR_EL1/MAIR_EL1 and physical memory."""

        def __init__(self):
            super(PlWalk, self).__init__("pl-walk", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            if not arg.strip():
                raise gdb.GdbError("usage: pl-walk ADDR")
            va = eval_addr(arg)
            r, regs = pl_walk_result(va)
            w = _el_warning()
            if w:
                print(w)
            for line in format_walk(r, regs.get("MAIR_EL1")):
                print(line)

    class PlPtdump(gdb.Command):
        """Dump the live translation tables in Linux arm64 ptdump style.
Usage: pl-ptdump [ttbr1|ttbr0]   (default ttbr1)
Consecutive leaves with the same level and attributes are merged. Columns:
range, size, level, F (invalid), USR, RW/ro, NX/x (PXN), SHD, AF, NG, CON, BLK, UXN, memory type."""

        def __init__(self):
            super(PlPtdump, self).__init__("pl-ptdump", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            which = (arg.strip() or "ttbr1").lower()
            if which not in ("ttbr0", "ttbr1", "0", "1", "kernel", "user"):
                raise gdb.GdbError("usage: pl-ptdump [ttbr1|ttbr0]")
            upper = which in ("ttbr1", "1", "kernel")
            regs = live_regs()
            hp = half_params(regs, upper)
            ttbr = regs["TTBR1_EL1" if upper else "TTBR0_EL1"]
            w = _el_warning()
            if w:
                print(w)
            print("# %s = %#x, %s" % (hp.name, ttbr, hp.describe()))
            if not regs["SCTLR"] & 1:
                print("# note: SCTLR_EL1.M=0, the MMU is off; these tables are not in use")
            if hp.epd:
                print("# note: TCR_EL1.EPD%d=1, the MMU does not walk these tables" % hp.n)
            markers = PAGELAB_TTBR1_MARKERS if upper else []
            with PhysMem() as pm:
                lines, leaves, ranges, tables = ptdump(upper, regs, pm.read, markers, regs.get("MAIR_EL1"))
            for line in lines:
                print(line)
            print("---[ end: %d leaf entries in %d ranges, %d table pages reachable ]---" % (leaves, ranges, tables))

    class PlEsr(gdb.Command):
        """Decode ESR_EL1. Usage: pl-esr [VALUE]   (default: the live $ESR_EL1)
Also prints the live FAR_EL1 and ELR_EL1."""

        def __init__(self):
            super(PlEsr, self).__init__("pl-esr", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            if arg.strip():
                esr = eval_addr(arg)
                src = "given"
            else:
                esr = need_reg("ESR_EL1", "ESR")
                src = "live"
            e = decode_esr(esr)
            print("(%s value)" % src)
            for line in e.lines:
                print(line)
            far = read_reg("FAR_EL1", "FAR")
            elr = read_reg("ELR_EL1", "ELR")
            if far is not None:
                note = ""
                if e.is_abort and e.fnv:
                    note = "  (not valid: FnV=1)"
                elif src == "given":
                    note = "  (live register; may not belong to this ESR)"
                print("FAR_EL1 %#018x%s" % (far, note))
            if elr is not None:
                print("ELR_EL1 %#018x" % elr)

    def _read_kernel_phys(va, n):
        """`n` bytes at kernel VA `va`, by walking the live tables in software
        and reading physical memory (works whatever the CPU's EL and whatever
        QEMU's debug access allows)."""
        regs = live_regs()
        out = b""
        with PhysMem() as pm:
            while len(out) < n:
                a = (va + len(out)) & MASK64
                chunk = min(n - len(out), 0x1000 - (a & 0xfff))
                pa = walk(a, regs, pm.read).translated()
                if pa is None:
                    raise gdb.GdbError("%#x does not translate in the live tables" % a)
                out += pm.read_bytes(pa, chunk)
        return out

    def read_kernel(va, n):
        """`n` bytes of kernel memory at `va`: gdb's normal (MMU) read, or, if
        QEMU refuses it (a CPU stopped at EL0, say), a software walk."""
        try:
            return bytes(gdb.selected_inferior().read_memory(va, n))
        except gdb.MemoryError as first:
            try:
                return _read_kernel_phys(va, n)
            except (gdb.GdbError, gdb.error, gdb.MemoryError) as ex:
                raise gdb.GdbError("cannot read %#x+%#x (%s; through the live tables: %s)" % (va, n, first, ex))

    def live_debug_table():
        """The kernel's process-table mirror, decoded (raises gdb.GdbError)."""
        if gdb.selected_thread() is None:
            # Without a target gdb reads the ELF's sections: the initial table.
            raise gdb.GdbError("no running kernel to read (connect first: target remote :1234); "
                               "the ELF file alone only holds the table's initial, empty state")
        try:
            base = _info_address(PROCS_SYMBOL)
        except gdb.GdbError as ex:
            raise gdb.GdbError("symbol %s not found (%s): load the kernel ELF with its symbols "
                               "(target/aarch64-unknown-none-softfloat/release/pagelab-kernel), or this "
                               "kernel predates the process-table mirror" % (PROCS_SYMBOL, ex))
        try:
            return read_debug_table(read_kernel, base)
        except DebugTableError as ex:
            raise gdb.GdbError(str(ex))

    def selected_cpu():
        """The kernel CPU id of gdb's selected thread: QEMU numbers its threads
        by CPU index (thread N+1 = CPU#N), and the kernel numbers CPUs in
        devicetree order from the boot CPU, which on -M virt is the same."""
        th = gdb.selected_thread()
        if th is None:
            return None
        lwp = th.ptid[1] if th.ptid and len(th.ptid) > 1 else 0
        return (lwp if lwp > 0 else th.num) - 1

    class PlProcs(gdb.Command):
        """List the kernel's processes, from its debug mirror PAGELAB_DEBUG_PROCS.
Usage: pl-procs
Columns: pid, ppid, name, PGD (TTBR0 root PA), ASID and its generation (the
current value of the mm's ASID slot; ? before it first runs), number of VMAs,
and the CPUs running one of its tasks. Slots being written when the kernel
stopped, and processes or VMAs that did not fit, are reported as notes."""

        def __init__(self):
            super(PlProcs, self).__init__("pl-procs", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            if arg.strip():
                raise gdb.GdbError("usage: pl-procs (no arguments)")
            for line in format_procs(live_debug_table()):
                print(line)

    class PlVmas(gdb.Command):
        """List VMAs from the kernel's debug mirror PAGELAB_DEBUG_PROCS.
Usage: pl-vmas [PID|NAME|current]   (default: every process)
`current`: the process whose task runs on gdb's selected CPU (thread).
One line per VMA, as the console's `P maps`:
  START-END PERM SIZE folio FOLIO FLAGS [file ID pgoff N]
PERM as /proc/PID/maps; FOLIO the largest anonymous folio (THP size);
FLAGS the VmFlags names (READ|WRITE|EXEC|SHARED|MAYWRITE|PFNMAP|IO|...);
file/pgoff for memfd and shared-memory mappings."""

        def __init__(self):
            super(PlVmas, self).__init__("pl-vmas", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            t = live_debug_table()
            spec = arg.strip()
            if not spec:
                if not t.procs:
                    print("pl-vmas: no processes")
                for i, p in enumerate(t.procs):
                    if i:
                        print("")
                    for line in format_vmas(t, p):
                        print(line)
                for n in t.notes:
                    if n.startswith("OVERFLOW"):
                        print("note: " + n)
                return
            if spec == "current":
                cpu = selected_cpu()
                if cpu is None or not 0 <= cpu < t.max_cpus:
                    raise gdb.GdbError("pl-vmas current: no selected CPU the table knows (%s)" % cpu)
                pid = t.running[cpu][0]
                if pid == 0:
                    raise gdb.GdbError("pl-vmas current: cpu%d runs no process's task now" % cpu)
                spec = str(pid)
            try:
                p = find_proc(t, spec)
            except DebugTableError as ex:
                more = " (%d more have no slot and cannot be shown)" % t.unslotted if t.unslotted else ""
                raise gdb.GdbError("pl-vmas: %s%s" % (ex, more))
            for line in format_vmas(t, p):
                print(line)

    class PlAgree(gdb.Command):
        """Compare pl-walk with QEMU's own translation (monitor gva2gpa).
Usage: pl-agree EXPR [EXPR...]   (separate expressions with ';' if they contain spaces)
Prints `OK va -> pa|unmapped` or `MISMATCH ...` per address and a final
`pl-agree: PASS|FAIL ...` line. A trailing `=unmapped` / `=mapped` /
`=0xPA` on an expression also checks the expected result."""

        def __init__(self):
            super(PlAgree, self).__init__("pl-agree", gdb.COMMAND_DATA)

        def invoke(self, arg, from_tty):
            items = [a for a in (arg.split(";") if ";" in arg else arg.split()) if a.strip()]
            if not items:
                raise gdb.GdbError("usage: pl-agree EXPR [EXPR...]")
            bad = 0
            for item in items:
                expr, _, want = item.strip().partition("=")
                try:
                    va = eval_addr(expr)
                    r, _ = pl_walk_result(va)
                    ours = r.translated()
                    theirs = qemu_gva2gpa(va)
                except (gdb.error, gdb.GdbError, ValueError) as ex:
                    print("MISMATCH %s: error: %s" % (expr.strip(), ex))
                    bad += 1
                    continue
                show = lambda p: "unmapped" if p is None else "%#x" % p
                problem = None
                if ours != theirs:
                    problem = "pl-walk %s, gva2gpa %s" % (show(ours), show(theirs))
                elif want:
                    want = want.strip()
                    if want == "unmapped" and ours is not None:
                        problem = "expected unmapped, both say %s" % show(ours)
                    elif want == "mapped" and ours is None:
                        problem = "expected mapped, both say unmapped"
                    elif want not in ("unmapped", "mapped") and ours != int(want, 0):
                        problem = "expected %s, both say %s" % (want, show(ours))
                if problem:
                    bad += 1
                    print("MISMATCH %#018x (%s): %s" % (va, expr.strip(), problem))
                else:
                    why = (" (" + r.fault_str() + ")") if ours is None and r.fault else ""
                    print("OK %#018x -> %s%s  [%s]" % (va, show(ours), why, expr.strip()))
            print("pl-agree: %s, %d addresses, %d mismatches" % ("PASS" if bad == 0 else "FAIL", len(items), bad))

    class PlPa(gdb.Function):
        """$pl_pa(VA): physical address of VA from the live tables, or -1."""

        def __init__(self):
            super(PlPa, self).__init__("pl_pa")

        def invoke(self, va):
            pa = pl_translate(int(va) & MASK64)
            return -1 if pa is None else pa

    PlWalk()
    PlPtdump()
    PlEsr()
    PlProcs()
    PlVmas()
    PlAgree()
    PlPhys()
    PlSysreg()
    PlPa()


if __name__ == "__main__" and gdb is None:
    if "--selftest" in sys.argv[1:]:
        sys.exit(0 if selftest("-v" in sys.argv[1:]) else 1)
    print("usage: python3 %s --selftest [-v]   (inside gdb: source %s)" % (sys.argv[0], sys.argv[0]))
    sys.exit(2)
