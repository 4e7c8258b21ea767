#!/usr/bin/env python3
"""Writes a deterministic script of random console lines: valid commands,
valid commands with bad arguments, random tokens, binary junk, huge lines.
Usage: gen-fuzz-script.py SEED COUNT > FILE"""
import random
import sys

seed, count = int(sys.argv[1]), int(sys.argv[2])
r = random.Random(seed)
procs = ["A", "B", "C", "Zz_9"]
regions = ["r", "buf", "x1"]
numbers = ["0", "1", "4K", "64K", "2M", "1G", "0x1000", "0xfff", "0x", "-1", "99999999999999999999",
           "0xffffffffffffffff", "12q", "3.5", "0x10K", "18446744073709551615", "4096", "7"]
bytes_ = ["0x00", "0xff", "0x5a", "0x100", "256", "-1", "zz", "0x"]
cmds = ["spawn", "exit", "mmap", "munmap", "mprotect", "madvise", "write", "check", "touch", "expect-fault", "walk", "atcheck",
        "ptdump", "meminfo", "invariants", "help", "info", "cpus", "kwalk", "query", "stats", "pin", "uffd", "fork"]


def rng():
    reg = r.choice(regions)
    k = r.random()
    if k < 0.4:
        return reg
    if k < 0.7:
        return f"{reg}+{r.choice(numbers)}"
    return f"{reg}+{r.choice(numbers)}:{r.choice(numbers)}"


def line():
    k = r.random()
    p = r.choice(procs)
    if k < 0.10:
        return f"spawn {p}"
    if k < 0.18:
        opts = " ".join(r.sample(["anon", "private", "shared", "prot=r", "prot=rw", "prot=none", "prot=x",
                                  "align=2M", "align=3", "thp=never", "thp=2M", "memfd=f", "pfn=0x9000000"], r.randint(0, 3)))
        return f"{p} mmap {r.choice(regions)} {r.choice(numbers)} {opts}"
    if k < 0.35:
        return f"{p} {r.choice(['write', 'check'])} {rng()} {r.choice(bytes_)}"
    if k < 0.42:
        return f"{p} touch {rng()} {r.choice(['read', 'write', 'exec'])}"
    if k < 0.47:
        return f"{p} expect-fault {r.choice(['read', 'write'])} {rng()}"
    if k < 0.52:
        c = r.choice(['walk', 'atcheck', 'munmap', 'mprotect', 'madvise', 'query', 'stats'])
        tail = {"mprotect": r.choice(["prot=r", "prot=rw", "prot=none", "prot=q"]),
                "madvise": r.choice(["dontneed", "pageout", "hugepage", "x"]),
                "query": "expect " + " ".join(r.sample(["present", "!writable", "anon", "block", "exclusive", "folio=4K", "zz"], 2)),
                "stats": "expect " + r.choice(["rss=0", "anon=1", "bogus=2", "rss"])}.get(c, "")
        return f"{p} {c} {rng()} {tail}"
    if k < 0.55:
        return f"{p} exit"
    if k < 0.60:
        return f"ptdump {r.choice(procs + ['kernel', '9x', ''])}"
    if k < 0.70:
        return " ".join(r.choice(cmds + procs + regions + numbers) for _ in range(r.randint(1, 8)))
    if k < 0.78:
        return "!" + " ".join(r.choice(cmds + procs) for _ in range(r.randint(0, 4)))
    if k < 0.86:
        return "".join(chr(r.randint(0, 255)) for _ in range(r.randint(1, 60)))
    if k < 0.90:
        return "x" * r.randint(1000, 3000)
    if k < 0.95:
        return "# " + "".join(r.choice("abc# !") for _ in range(20))
    return ""


out = sys.stdout.buffer
for _ in range(count):
    out.write(line().encode("latin-1") + b"\n")
# End with a sanity check that the kernel is still fully working.
for p in procs:
    out.write(f"{p} exit\n".encode())
out.write(b"spawn Final\nFinal mmap m 8K\nFinal write m 0x42\nFinal check m 0x42\nFinal exit\ninvariants\n")
