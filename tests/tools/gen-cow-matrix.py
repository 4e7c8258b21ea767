#!/usr/bin/env python3
"""Generates tests/scripts/only-4K/cow-matrix.scn: every anonymous COW family of
Linux's tools/testing/selftests/mm/cow.c (C1..C14, see
../shared/notes/linux-mm-selftests.md section B) on every memory type below
(section A), 4K granule:

  B    base pages (thp=never), 16K
  T64  one 64K contpte folio
  S1   a 64K folio reduced to one PTE (DONTNEED all pages but the first);
       the test runs on that single page
  P2M  a PTE-mapped 2M THP (mprotect one page R/O and back splits the block)
  T2M  a PMD-mapped 2M THP (one level-2 block)

Every case uses its own processes, regions, handles and fill bytes (no byte is
used twice in the script, and none is 0x00, so nothing can pass by reading the
zero page or another case's data). Each case runs `invariants` while its pins and
processes are still alive, then unpins and exits everything; every family block
and the script end with `invariants` once everything is gone.

Pins and references cover the whole test range on B, T64 and S1, and 64K of the
2M types (checkpin reads every byte through the handle).

Usage: gen-cow-matrix.py [-o FILE | --check]
  (default) write tests/scripts/only-4K/cow-matrix.scn next to this tool's tree
  -o FILE   write FILE instead ('-' = stdout)
  --check   exit 1 if the committed script differs from what would be generated
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "scripts", "only-4K", "cow-matrix.scn")


class MemType:
    def __init__(self, tag, desc, setup, r, pr, after_fork, intact, region="m"):
        self.tag = tag            # name used in process and handle names
        self.desc = desc          # one-line description for the comments
        self.setup = setup        # function(P, old) -> lines that populate region m
        self.r = r                # test range (written, checked, mprotected)
        self.pr = pr              # pinned / referenced range (inside r)
        self.after_fork = after_fork  # flags of the shared mapping right after fork
        self.intact = intact      # flags the mapping keeps across a whole-range mprotect
        self.region = region      # the region munmapped by C3..C6


def setup_b(p, old):
    return [f"{p} mmap m 16K thp=never",
            f"{p} write m {old}",
            f"{p} query m expect present anon exclusive writable folio=4K !cont !block"]


def setup_t64(p, old):
    return [f"{p} mmap m 64K thp=64K",
            f"{p} write m {old}",
            f"{p} query m expect present anon exclusive writable cont folio=64K"]


def setup_s1(p, old):
    return [f"{p} mmap m 64K thp=64K",
            f"{p} write m {old}",
            f"{p} query m expect cont folio=64K",
            f"{p} madvise m+0x1000:0xf000 dontneed",
            f"{p} query m+0 expect present anon exclusive writable folio=64K !cont",
            f"{p} query m+0x1000:0xf000 expect !present"]


def setup_p2m(p, old):
    return [f"{p} mmap m 2M thp=2M",
            f"{p} write m {old}",
            f"{p} query m expect block folio=2M",
            f"{p} mprotect m+0x1000 prot=r",
            f"{p} mprotect m+0x1000 prot=rw",
            f"{p} query m expect present anon exclusive writable folio=2M !block"]


def setup_t2m(p, old):
    return [f"{p} mmap m 2M thp=2M",
            f"{p} write m {old}",
            f"{p} query m expect present anon exclusive writable block folio=2M"]


TYPES = [
    MemType("B", "base pages (thp=never), 16K", setup_b, "m", "m", "folio=4K", ""),
    MemType("T64", "one 64K contpte folio", setup_t64, "m", "m", "cont folio=64K", ""),
    MemType("S1", "one PTE left of a 64K folio (the test runs on m+0)", setup_s1,
            "m+0", "m+0", "folio=64K !cont", ""),
    MemType("P2M", "PTE-mapped 2M THP (pins: the last 64K)", setup_p2m,
            "m", "m+0x1f0000:64K", "folio=2M !block", "!block"),
    MemType("T2M", "PMD-mapped 2M THP (pins: the last 64K)", setup_t2m,
            "m", "m+0x1f0000:64K", "block folio=2M", "block"),
]


def q(p, rng, *flags):
    fl = " ".join(f for f in flags if f)
    return f"{p} query {rng} expect {fl}"


# ----------------------------------------------------------------- families
# Each takes (t: MemType, P: parent name, C: child name, H: handle name,
# old, new: fill bytes) and returns the lines after `spawn P` and the setup.
# Every family ends with "invariants" while handles/processes are live, and
# then releases everything.

def c1(t, P, C, H, old, new):
    return [f"{P} fork {C}",
            q(P, t.r, "present !exclusive !writable", t.after_fork),
            q(C, t.r, "present !exclusive !writable", t.after_fork),
            f"{P} write {t.r} {new}",
            q(P, t.r, "exclusive writable"),
            f"{C} check {t.r} {old}",
            f"{P} check {t.r} {new}",
            q(C, t.r, "present !writable", t.after_fork),
            "invariants",
            f"{C} exit", f"{P} exit"]


def c2(t, P, C, H, old, new):
    return [f"{P} fork {C}",
            f"{P} mprotect {t.r} prot=r",
            f"{P} mprotect {t.r} prot=rw",
            q(P, t.r, "present !writable !exclusive", t.intact),
            f"{P} write {t.r} {new}",
            q(P, t.r, "exclusive writable"),
            f"{C} check {t.r} {old}",
            f"{P} check {t.r} {new}",
            "invariants",
            f"{C} exit", f"{P} exit"]


def c3_c4(trick):
    def fam(t, P, C, H, old, new):
        lines = [f"{P} fork {C}",
                 f"{C} ref {H} {t.pr}",
                 f"{C} munmap {t.region}"]
        if trick:
            lines += [f"{P} mprotect {t.r} prot=r",
                      f"{P} mprotect {t.r} prot=rw",
                      q(P, t.r, "present !writable !exclusive", t.intact)]
        lines += [f"{P} write {t.r} {new}",
                  q(P, t.r, "exclusive writable"),
                  f"checkpin {H} {old}",
                  f"{P} check {t.r} {new}",
                  "invariants",
                  f"unpin {H}",
                  f"{C} exit", f"{P} exit"]
        return lines
    return fam


def c5(t, P, C, H, old, new):
    return [f"{P} ref {H} {t.pr}",
            f"{P} fork {C}",
            f"{P} munmap {t.region}",
            f"{C} write {t.r} {new}",
            q(C, t.r, "exclusive writable"),
            f"checkpin {H} {old}",
            f"{C} check {t.r} {new}",
            "invariants",
            f"unpin {H}",
            f"{C} exit", f"{P} exit"]


def c6(t, P, C, H, old, new):
    return [f"{P} fork {C}",
            f"{P} ref {H} {t.pr}",
            f"{P} munmap {t.region}",
            f"{C} write {t.r} {new}",
            q(C, t.r, "exclusive writable"),
            f"checkpin {H} {old}",
            f"{C} check {t.r} {new}",
            "invariants",
            f"unpin {H}",
            f"{C} exit", f"{P} exit"]


def c7(t, P, C, H, old, new):
    return [f"{P} pin {H} {t.pr} rw longterm",
            q(P, t.pr, "exclusive writable"),
            f"{P} mprotect {t.r} prot=r",
            q(P, t.r, "present exclusive !writable", t.intact),
            f"{P} mprotect {t.r} prot=rw",
            q(P, t.r, "exclusive writable", t.intact),
            f"{P} write {t.r} {new}",
            f"checkpin {H} {new}",
            f"{P} check {t.r} {new}",
            "invariants",
            f"unpin {H}",
            f"{P} exit"]


def c8(t, P, C, H, old, new):
    return [f"{P} pin {H} {t.pr} rw longterm",
            f"{P} fork {C}",
            q(P, t.pr, "exclusive writable"),
            q(C, t.pr, "present exclusive"),
            f"{P} write {t.r} {new}",
            f"checkpin {H} {new}",
            f"{C} check {t.r} {old}",
            f"{P} check {t.r} {new}",
            "invariants",
            f"unpin {H}",
            f"{C} exit", f"{P} exit"]


def c9_c10(fast):
    def fam(t, P, C, H, old, new):
        return [f"{P} fork {C}",
                f"{P} pin {H} {t.pr} ro longterm" + (" fast" if fast else ""),
                q(P, t.pr, "present exclusive !writable"),
                f"{P} write {t.r} {new}",
                f"checkpin {H} {new}",
                f"{C} check {t.r} {old}",
                f"{P} check {t.r} {new}",
                "invariants",
                f"unpin {H}",
                f"{C} exit", f"{P} exit"]
    return fam


def c11_c12(fast):
    def fam(t, P, C, H, old, new):
        return [f"{P} fork {C}",
                f"{C} exit",
                f"{P} wait",
                q(P, t.r, "present !exclusive !writable"),
                f"{P} pin {H} {t.pr} ro longterm" + (" fast" if fast else ""),
                q(P, t.pr, "present exclusive"),
                f"{P} write {t.r} {new}",
                f"checkpin {H} {new}",
                f"{P} check {t.r} {new}",
                "invariants",
                f"unpin {H}",
                f"{P} exit"]
    return fam


def c13_c14(fast):
    def fam(t, P, C, H, old, new):
        return [f"{P} mprotect {t.r} prot=r",
                q(P, t.r, "present exclusive !writable", t.intact),
                f"{P} pin {H} {t.pr} ro longterm" + (" fast" if fast else ""),
                q(P, t.pr, "present exclusive !writable"),
                f"{P} mprotect {t.r} prot=rw",
                q(P, t.r, "exclusive writable", t.intact),
                f"{P} write {t.r} {new}",
                f"checkpin {H} {new}",
                f"{P} check {t.r} {new}",
                "invariants",
                f"unpin {H}",
                f"{P} exit"]
    return fam


FAMILIES = [
    ("C1", "basic COW after fork: the child keeps the old data", c1),
    ("C2", "C1 with mprotect R/O then R/W in the parent after fork: the R/W upgrade "
           "must not make a COW-shared entry writable", c2),
    ("C3", "vmsplice-like reference in the child, the child unmaps, the parent writes: "
           "the reference sees the old data (CVE-2020-29374)", c3_c4(False)),
    ("C4", "C3 with the mprotect trick in the parent before its write", c3_c4(True)),
    ("C5", "reference before fork, the parent unmaps, the child writes: the child's "
           "write must copy although it is the only mapper", c5),
    ("C6", "reference after fork in the parent, the parent unmaps, the child writes", c6),
    ("C7", "long-term R/W pin (io_uring fixed buffer), mprotect R/O then R/W, write "
           "through the page table: the pinned exclusive page is reused", c7),
    ("C8", "fork with a long-term R/W pin (child stays alive): fork copies the pinned "
           "pages for the child, the parent's write lands in the pinned pages", c8),
    ("C9", "R/O long-term pin (slow GUP) of a COW-shared page: GUP unshares first, "
           "the pin sees the parent's later write", c9_c10(False)),
    ("C10", "C9 with GUP-fast (it must refuse the shared page and fall back)", c9_c10(True)),
    ("C11", "R/O long-term pin (slow GUP) of a previously shared page (the child exited): "
            "mapped once but not exclusive; the pin sees the later write", c11_c12(False)),
    ("C12", "C11 with GUP-fast", c11_c12(True)),
    ("C13", "R/O long-term pin (slow GUP) of an exclusive page mapped R/O (mprotect), "
            "back to R/W, write: the pin sees the write", c13_c14(False)),
    ("C14", "C13 with GUP-fast", c13_c14(True)),
]


def generate():
    out = []
    w = out.append
    w("# GENERATED by tests/tools/gen-cow-matrix.py -- do not edit; regenerate with")
    w("#   python3 tests/tools/gen-cow-matrix.py")
    w("#")
    w("# Linux tools/testing/selftests/mm/cow.c: every anonymous COW family (C1..C14,")
    w("# ../shared/notes/linux-mm-selftests.md section B) on every memory type (4K granule):")
    for t in TYPES:
        w(f"#   {t.tag:<4} {t.desc}")
    w("# Process P<family>_<type>, child K<family>_<type>, handle H<family>_<type>. Every")
    w("# case uses two fill bytes of its own (never 0x00, never reused in this script).")
    w("")
    fill = iter(range(1, 256))

    def nb():
        return f"{next(fill):#04x}"

    for fid, fdesc, fam in FAMILIES:
        w("# " + "=" * 76)
        w(f"# {fid}: {fdesc}.")
        w("# " + "=" * 76)
        for t in TYPES:
            P, C, H = f"P{fid[1:]}_{t.tag}", f"K{fid[1:]}_{t.tag}", f"H{fid[1:]}_{t.tag}"
            old, new = nb(), nb()
            w("")
            w(f"# {fid} on {t.tag}: {t.desc}. Old {old}, new {new}.")
            w(f"spawn {P}")
            for line in t.setup(P, old):
                w(line)
            for line in fam(t, P, C, H, old, new):
                w(line)
        w("")
        w(f"# {fid} done: every process, page and handle of the block is gone.")
        w("invariants")
        w("")
    w("# The end: nothing is left.")
    w("invariants")
    return "\n".join(out) + "\n"


def main(argv):
    text = generate()
    if argv[1:2] == ["--check"]:
        try:
            with open(DEFAULT_OUT) as f:
                cur = f.read()
        except OSError as e:
            print(f"gen-cow-matrix: {e}", file=sys.stderr)
            return 1
        if cur != text:
            print(f"gen-cow-matrix: {os.path.relpath(DEFAULT_OUT)} is stale; regenerate it",
                  file=sys.stderr)
            return 1
        return 0
    out = DEFAULT_OUT
    if argv[1:2] == ["-o"] and len(argv) == 3:
        out = argv[2]
    elif len(argv) != 1:
        print(__doc__.strip().splitlines()[-4], file=sys.stderr)
        return 2
    if out == "-":
        sys.stdout.write(text)
    else:
        with open(out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
