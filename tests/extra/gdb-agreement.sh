#!/usr/bin/env bash
# Checks gdb/pagelab.py against the live machine:
#  1. `python3 gdb/pagelab.py --selftest` (pure decoding logic, no QEMU);
#  2. for EL1 entry (-M virt) and EL2 entry (-M virt,virtualization=on): boots
#     the kernel to its console with a gdbstub, attaches gdb-multiarch and checks
#     that SCTLR_EL1.M=1, that pl-walk's PA equals QEMU's `monitor gva2gpa` for
#     kernel text/rodata/data, the linear map and the UART, and that both call a
#     stack guard and a level-0 hole unmapped; also pl-walk/pl-esr/pl-procs
#     output and that QEMU is back in virtual-memory mode afterwards. Then it
#     asks the kernel itself (`ptdump kernel` on the console) and requires the
#     same ranges as gdb's pl-ptdump. The other physical-read routes: with
#     `pl-phys xp` (QEMU's monitor, no packet) the walks must be the same;
#     `pl-phys openocd` must fail clearly against QEMU; a TCR_EL1 given with
#     pl-sysreg (EPD1=1) must be the one used;
#  2a. processes (-smp 2, console commands): pl-procs/pl-vmas == the console's
#     `ps`/`P maps` and the mmap layout, pagelab.py's offsets == the DWARF of
#     the kernel's mirror structs; stopped inside B's task at EL0 and in its
#     page fault, pl-procs names the stopped CPU and its TTBR0 is B's pgd+ASID;
#  2b. a crashed kernel (pagelab.crash=unmapped-read, QEMU paused instead of
#     reset): pl-esr/pl-walk decode the live ESR_EL1/FAR_EL1 like its report;
#  3. granule conformance: a bare `-cpu max` QEMU (no kernel) gets synthetic
#     tables for 4K/16K/64K granules, many TxSZ values, both TTBRs, LPA2 and
#     52-bit PAs, programmed by stepping MSR instructions, and pl-walk must
#     agree with QEMU's walker on every probed address.
# Env (set by ./qemu-run.sh test): PAGELAB_IMG, PAGELAB_ELF, PAGELAB_ROOT;
# derived from the repository (building if needed) when unset. Exit 0 = pass.
set -euo pipefail

root=${PAGELAB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
granule=${PAGELAB_GRANULE:-4K}
cpu=${PAGELAB_CPU:-cortex-a72}
[[ $granule == 16K ]] && cpu=max   # Cortex-A53/A72 have no 16K granule
case $granule in 4K) hole_level=0 ;; *) hole_level=1 ;; esac
target=aarch64-unknown-none-softfloat
elf=${PAGELAB_ELF:-$root/target/$target/release/pagelab-kernel}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gdb-agreement.XXXXXX")
qpid=

cleanup() {
    if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then
        kill "$qpid" 2>/dev/null || true
        sleep 0.2
        kill -KILL "$qpid" 2>/dev/null || true
    fi
    [[ -n $qpid ]] && wait "$qpid" 2>/dev/null || true
    exec 3>&- 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
budget=55 # seconds for the whole script; later stages are skipped (and fail) beyond it
in_budget() { # stage name
    ((SECONDS < budget)) && return 0
    fail "$1: skipped, the ${budget} s time budget is used up"
    return 1
}
tmo() { # a timeout of at most $1 seconds that also ends near the budget
    local left=$((budget + 5 - SECONDS))
    ((left < 5)) && left=5
    echo $(($1 < left ? $1 : left))
}
indent() { sed 's/^/    | /'; }

for tool in python3 qemu-system-aarch64 gdb-multiarch; do
    command -v "$tool" >/dev/null || { echo "gdb-agreement: $tool not found (./qemu-run.sh installs it)"; exit 1; }
done

if [[ ! -f $elf && -z ${PAGELAB_ELF:-} ]]; then
    echo "gdb-agreement: building the kernel ($elf missing)"
    (cd "$root" && cargo build -q -p pagelab-kernel --target "$target" --release) ||
        { echo "gdb-agreement: kernel build failed"; exit 1; }
fi
[[ -f $elf ]] || { echo "gdb-agreement: no kernel ELF at $elf"; exit 1; }
if [[ -n ${PAGELAB_IMG:-} ]]; then
    img=$PAGELAB_IMG
else
    # Always from this ELF, so symbols and image cannot disagree.
    img=$tmp/pagelab.img
    objcopy_bin=$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy
    [[ -x $objcopy_bin ]] || objcopy_bin=$(command -v llvm-objcopy || command -v rust-objcopy || true)
    [[ -n $objcopy_bin ]] || { echo "gdb-agreement: no llvm-objcopy (rustup component add llvm-tools)"; exit 1; }
    "$objcopy_bin" -O binary "$elf" "$img"
fi
[[ -f $img ]] || { echo "gdb-agreement: no kernel image at $img"; exit 1; }

# ---------------------------------------------------------------------------
# 1. Pure self-test.
# ---------------------------------------------------------------------------
if out=$(cd "$root" && timeout 30 python3 gdb/pagelab.py --selftest 2>&1); then
    pass "pagelab.py --selftest: $(tail -n 1 <<<"$out")"
else
    fail "pagelab.py --selftest"
    indent <<<"$out"
fi

# ---------------------------------------------------------------------------
# QEMU with a gdbstub on a free port. Serial output goes to $tmp/$name.log,
# serial input comes from a FIFO on fd 3.
# ---------------------------------------------------------------------------
port_busy() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_qemu() { # name, then QEMU arguments (without -gdb)
    local name=$1; shift
    local base=$((12340 + $$ % 1000)) try
    rm -f "$tmp/$name.in"
    mkfifo "$tmp/$name.in"
    exec 3<>"$tmp/$name.in"
    for try in 0 1 2 3 4 5 6 7 8 9; do
        port=$((base + try * 7))
        port_busy "$port" && continue
        : >"$tmp/$name.log"
        timeout -k 2 50 qemu-system-aarch64 "$@" -gdb "tcp:127.0.0.1:$port" \
            <&3 >"$tmp/$name.log" 2>"$tmp/$name.err" &
        qpid=$!
        sleep 0.3
        if ! kill -0 "$qpid" 2>/dev/null && grep -qiE "address already in use|available port" "$tmp/$name.err"; then
            wait "$qpid" 2>/dev/null || true
            qpid=
            continue
        fi
        return 0
    done
    echo "gdb-agreement: no free TCP port for the gdbstub"
    return 1
}

stop_qemu() {
    if [[ -n $qpid ]]; then
        kill "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
        qpid=
    fi
    exec 3>&- || true
}

wait_for() { # file, fixed string, seconds; true once the string is in the file
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qF -- "$2" "$1" 2>/dev/null && return 0
        [[ -n $qpid ]] && ! kill -0 "$qpid" 2>/dev/null && { grep -qF -- "$2" "$1" 2>/dev/null; return; }
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------
# 2. The kernel, entered at EL1 and at EL2.
# ---------------------------------------------------------------------------
# What both gdb check scripts below start with (sourced before each):
# OK/MISMATCH lines, the list of problems, and `run`, which counts a gdb
# error as one.
cat >"$tmp/checks-lib.py" <<'PYEOF'
import os
import sys

import gdb

pl = sys.modules["__main__"]
fails = []


def ok(msg):
    print("OK " + msg)


def bad(msg):
    print("MISMATCH " + msg)
    fails.append(msg)


def run(cmd):
    try:
        return gdb.execute(cmd, to_string=True)
    except gdb.error as ex:
        bad("%s: gdb error: %s" % (cmd, ex))
        return ""
PYEOF

cat >"$tmp/kernel-checks.py" <<'PYEOF'
# Runs inside gdb after `source gdb/pagelab.py` and checks-lib.py; prints
# OK/MISMATCH lines and a final "GDB-CHECKS: PASS|FAIL" line.

try:
    sctlr = pl.read_reg("SCTLR", "SCTLR_EL1")
    if sctlr is None:
        bad("cannot read SCTLR_EL1 ($SCTLR)")
    elif sctlr & 1:
        ok("SCTLR_EL1 = %#x: M=1, the MMU is on" % sctlr)
    else:
        bad("SCTLR_EL1 = %#x: M=0, the MMU is off" % sctlr)
    el = pl.current_el()
    if el == 1:
        ok("CPU at EL1 (cpsr %#x)" % pl.read_reg("cpsr"))
    else:
        bad("CPU at EL%s, expected EL1" % el)

    start = pl.eval_addr("&_start")
    if start == 0xffff800000000000:
        ok("_start = %#x" % start)
    else:
        bad("_start = %#x, expected 0xffff800000000000" % start)
    rodata = pl.eval_addr("&__rodata_start")
    data = pl.eval_addr("&__data_start")
    stacks = pl.eval_addr("&__stacks_start")
    # The kernel prints where it was loaded; the image is mapped linearly.
    kpa = int(os.environ["PL_KERNEL_PA"], 0)
    want = [
        ("_start", start, kpa),
        ("__rodata_start", rodata, kpa + (rodata - start)),
        ("__data_start", data, kpa + (data - start)),
        ("__data_start+0x1238", data + 0x1238, kpa + (data - start) + 0x1238),
        ("linear map", 0xffff000040000000 + 0x1234000, 0x41234000),
        ("linear map+0x567", 0xffff000040000000 + 0x1234567, 0x41234567),
        ("UART", 0xffff700009000000, 0x09000000),
        ("stack guard __stacks_start-0x1000", stacks - 0x1000, None),
        ("level-0 hole", 0xffff680000000000, None),
        ("TTBR0 (empty)", 0x0000000000400000, None),
    ]
    args = ";".join("%#x=%s" % (va, "unmapped" if pa is None else "%#x" % pa) for _, va, pa in want)
    out = run("pl-agree " + args)
    for line, (name, va, pa) in zip([l for l in out.splitlines() if l.startswith(("OK", "MISMATCH"))], want):
        line = line.split("  [")[0]
        if line.startswith("OK"):
            ok("%s  [%s]" % (line[3:], name))
        else:
            bad("%s  [%s]" % (line[9:], name))
    if "pl-agree: PASS" not in out:
        bad("pl-agree did not pass:\n" + out)

    # What the kernel's layout looks like with this build's granule.
    gran = os.environ.get("PL_GRANULE", "4K")
    page = {"4K": "page 4K", "16K": "page 16K", "64K": "page 64K"}[gran]
    block, blevel = {"4K": ("block 1G", 1), "16K": ("block 32M", 2), "64K": ("block 512M", 2)}[gran]
    hole_level = 0 if gran == "4K" else 1     # 16K: both level-0 entries are in use; 64K starts at level 1

    # pl-walk output for a page, a linear-map block and the two holes.
    w = run("pl-walk %#x" % (data + 0x10))
    if "  L3 " in w and page in w and "=> PA %#x" % (kpa + data - start + 0x10) in w:
        ok("pl-walk .data: %s at level 3, PA printed" % page)
    else:
        bad("pl-walk .data output:\n" + w)
    w = run("pl-walk 0xffff000041234567")
    if block in w and "=> PA 0x41234567" in w:
        ok("pl-walk linear map: %s at level %d" % (block, blevel))
    else:
        bad("pl-walk linear map output:\n" + w)
    w = run("pl-walk &__stacks_start - 0x1000")
    if "translation fault at level 3" in w:
        ok("pl-walk stack guard: translation fault at level 3")
    else:
        bad("pl-walk stack guard output:\n" + w)
    w = run("pl-walk 0xffff680000000000")
    if "translation fault at level %d" % hole_level in w:
        ok("pl-walk top-level hole: translation fault at level %d" % hole_level)
    else:
        bad("pl-walk top-level hole output:\n" + w)

    e = run("pl-esr 0x9600004f")
    if "Data Abort from the same EL" in e and "permission fault, level 3" in e and "WnR=1" in e and "FAR_EL1" in e:
        ok("pl-esr 0x9600004f: data abort, permission fault level 3, write")
    else:
        bad("pl-esr output:\n" + e)
    e = run("pl-esr")
    if "ESR_EL1" in e and "FAR_EL1" in e:
        ok("pl-esr (live): %s" % e.splitlines()[1].strip())
    else:
        bad("pl-esr (live) output:\n" + e)
    p = run("pl-procs")
    v = run("pl-vmas")
    if "(layout v1): 0 processes" in p and "running: no CPU runs" in p and v.strip() == "pl-vmas: no processes":
        ok("pl-procs/pl-vmas: the process table mirror decodes, no processes yet")
    else:
        bad("pl-procs/pl-vmas output:\n" + p + v)

    # What the console's `info` must print for pl-sysreg (checked after detach).
    with open(os.environ["PL_SYSREGS_OUT"], "w") as f:
        f.write("sysregs: TTBR1_EL1 %#x TCR_EL1 %#x MAIR_EL1 %#x SCTLR_EL1 %#x\n" % tuple(
            pl.read_reg(*n) for n in (("TTBR1_EL1", "TTBR1"), ("TCR_EL1", "TCR"), ("MAIR_EL1", "MAIR"), ("SCTLR", "SCTLR_EL1"))))

    d = run("pl-ptdump ttbr1")
    with open(os.environ["PL_PTDUMP_OUT"], "w") as f:
        f.write(d)
    if "---[ Linear Mapping start ]---" in d and (" PUD " if gran == "4K" else " PMD ") in d and "DEVICE/nGnRE" in d:
        ok("pl-ptdump ttbr1: %d lines" % len(d.splitlines()))
    else:
        bad("pl-ptdump output:\n" + d)
    d0 = run("pl-ptdump ttbr0")
    if "0 leaf entries" in d0:
        ok("pl-ptdump ttbr0: empty, as expected with no processes")
    else:
        bad("pl-ptdump ttbr0 output:\n" + d0)

    # The other physical-read routes. QEMU's monitor `xp` (what a gdbstub
    # without the packet leaves) must give the same translations and walk;
    # OpenOCD's `mdd phys` is unknown to QEMU, so it must fail, and clearly.
    w_packet = run("pl-walk 0xffff000041234567")
    run("pl-phys xp")
    sent = []
    real_execute = pl._execute
    pl._execute = lambda cmd: (sent.append(cmd), real_execute(cmd))[1]
    try:
        out_xp = run("pl-agree " + args)
        w_xp = run("pl-walk 0xffff000041234567")
    finally:
        pl._execute = real_execute
    routes_ok = any(c.startswith("monitor xp ") for c in sent) and not any("PhyMemMode:1" in c for c in sent)
    if "pl-agree: PASS" in out_xp and w_xp == w_packet and "=> PA 0x41234567" in w_xp and routes_ok:
        ok("pl-phys xp: pl-agree passes and pl-walk prints the same walk as with the packet (%d monitor xp reads, no packet)"
           % sum(c.startswith("monitor xp ") for c in sent))
    else:
        bad("pl-phys xp (commands sent: %s):\n%s%s" % (sent[:6], out_xp, w_xp))
    run("pl-phys openocd")
    try:
        gdb.execute("pl-walk 0xffff000041234567", to_string=True)
        bad("pl-phys openocd: pl-walk worked against QEMU, which has no mdd command")
    except gdb.error as ex:
        if "mdd phys" in str(ex) and "cannot read physical memory" in str(ex):
            ok("pl-phys openocd: refused by QEMU with a clear error (%s)" % str(ex).splitlines()[0])
        else:
            bad("pl-phys openocd error: %s" % ex)
    run("pl-phys auto")
    # auto remembering a route from another server (OpenOCD, say) must look
    # again when that route fails here, not stay stuck on it.
    pl.PHYS["found"] = "openocd"
    w_re = run("pl-walk 0xffff000041234567")
    if w_re == w_packet and pl.PHYS["found"] in ("qemu", "xp"):
        ok("pl-phys auto: a stale remembered route (openocd) is dropped; found %s" % pl.PHYS["found"])
    else:
        bad("pl-phys auto with a stale route: found %s\n%s" % (pl.PHYS["found"], w_re))
    run("pl-phys auto")
    # pl-sysreg: a given TCR_EL1 with EPD1=1 must stop the TTBR1 walk (so the
    # given value, not the live one, is used); forgetting it restores it.
    tcr = pl.read_reg("TCR_EL1", "TCR")
    run("pl-sysreg TCR_EL1 %#x" % (tcr | (1 << 23)))
    w_epd = run("pl-walk 0xffff000041234567")
    run("pl-sysreg -")
    w_back = run("pl-walk 0xffff000041234567")
    if "EPD1=1: walks through TTBR1_EL1 are disabled" in w_epd and "given with pl-sysreg" in w_epd and w_back == w_packet:
        ok("pl-sysreg: a given TCR_EL1 (EPD1=1) is used, and forgotten with `pl-sysreg -`")
    else:
        bad("pl-sysreg:\n" + w_epd + w_back)

    # Back in virtual mode: QEMU answers 0 and a kernel VA reads through the MMU.
    mode = run("maint packet qqemu.PhyMemMode")
    if 'received: "0"' in mode:
        ok("Qqemu.PhyMemMode back to 0 (virtual)")
    else:
        bad("QEMU memory mode after the commands: " + mode.strip())
    try:
        b = bytes(gdb.selected_inferior().read_memory(start, 4))
        with open(os.environ["PL_IMG"], "rb") as f:
            want_b = f.read(4)
        if b == want_b:
            ok("virtual read of _start matches the image (%s)" % b.hex())
        else:
            bad("virtual read of _start gives %s, image has %s" % (b.hex(), want_b.hex()))
    except Exception as ex:
        bad("virtual read of _start failed: %s" % ex)
except Exception as ex:
    bad("exception in the checks: %r" % ex)

print("GDB-CHECKS: %s (%d problems)" % ("FAIL" if fails else "PASS", len(fails)))
PYEOF

kernel_run() { # machine
    local machine=$1 name=kernel-${1//[^a-z]/-}
    local log=$tmp/$name.log
    if ! start_qemu "$name" -M "$machine" -cpu "$cpu" -smp 1 -m 1G -nodefaults -no-user-config \
        -display none -serial stdio -monitor none -no-reboot -kernel "$img" -append "pagelab.mode=console"; then
        fail "gdb agreement ($machine): QEMU did not start"
        return
    fi
    if ! wait_for "$log" "pagelab> " 30; then
        fail "gdb agreement ($machine): no console prompt within 30 s"
        tail -n 20 "$log" "$tmp/$name.err" 2>/dev/null | indent
        stop_qemu
        return
    fi
    local kpa
    kpa=$(grep -oE 'kernel image at PA 0x[0-9a-f]+' "$log" | grep -oE '0x[0-9a-f]+$' | head -n 1 || true)
    [[ -n $kpa ]] || kpa=0x40080000
    cat >"$tmp/$name.gdb" <<EOF
set pagination off
set confirm off
target remote 127.0.0.1:$port
source $root/gdb/pagelab.py
source $tmp/checks-lib.py
source $tmp/kernel-checks.py
EOF
    local out status=0
    out=$(cd "$root" && PL_GRANULE=$granule PL_KERNEL_PA=$kpa PL_PTDUMP_OUT=$tmp/$name.ptdump PL_SYSREGS_OUT=$tmp/$name.sysregs PL_IMG=$img \
        timeout -k 2 "$(tmo 30)" gdb-multiarch -q -nx -batch "$elf" -x "$tmp/$name.gdb" 2>&1) || status=$?
    echo "  [$machine] gdb, kernel loaded at PA $kpa:"
    grep -E '^(OK|MISMATCH|GDB-CHECKS)' <<<"$out" | sed 's/^/    /' || true
    if [[ $status -eq 0 ]] && grep -q '^GDB-CHECKS: PASS' <<<"$out" && ! grep -q '^MISMATCH' <<<"$out"; then
        pass "gdb agreement ($machine): pl-walk == gva2gpa for all addresses, SCTLR.M=1, commands OK"
    else
        fail "gdb agreement ($machine): gdb status $status"
        grep -vE '^(OK|MISMATCH|GDB-CHECKS)' <<<"$out" | tail -n 30 | indent
    fi

    # The kernel's own ptdump must print the same ranges as pl-ptdump read from
    # the live tables (range lines must be identical; the region markers are
    # cosmetic and only reported if they differ).
    local mark
    mark=$(wc -l <"$log")
    printf 'ptdump kernel\r' >&3
    if wait_for_after "$log" "$mark" "---[ end:" 10; then
        tail -n +"$((mark + 1))" "$log" | tr -d '\r' | sed -n '/---\[ end:/q;/^0x\|^---\[/p' >"$tmp/$name.k-all"
        grep -E '^(0x|---\[)' "$tmp/$name.ptdump" | grep -v '^---\[ end' >"$tmp/$name.g-all" || true
        grep '^0x' "$tmp/$name.k-all" >"$tmp/$name.k-ranges" || true
        grep '^0x' "$tmp/$name.g-all" >"$tmp/$name.g-ranges" || true
        local kend gend
        kend=$(tail -n +"$((mark + 1))" "$log" | grep -oE -e 'end: [0-9]+ leaf entries in [0-9]+ ranges' | head -n 1 || true)
        gend=$(grep -oE -e 'end: [0-9]+ leaf entries in [0-9]+ ranges' "$tmp/$name.ptdump" | head -n 1 || true)
        if [[ -s $tmp/$name.g-ranges ]] && cmp -s "$tmp/$name.k-ranges" "$tmp/$name.g-ranges" &&
            [[ -n $kend && $kend == "$gend" ]]; then
            pass "ptdump agreement ($machine): console 'ptdump kernel' == pl-ptdump ($(wc -l <"$tmp/$name.g-ranges") ranges, ${kend#end: })"
            if ! cmp -s "$tmp/$name.k-all" "$tmp/$name.g-all"; then
                echo "  note: the region markers differ (update PAGELAB_TTBR1_MARKERS in gdb/pagelab.py):"
                diff "$tmp/$name.k-all" "$tmp/$name.g-all" | grep '^[<>] ---' | indent || true
            fi
        else
            fail "ptdump agreement ($machine): console 'ptdump kernel' differs from pl-ptdump ('$kend' vs '$gend'); < kernel, > gdb:"
            diff "$tmp/$name.k-all" "$tmp/$name.g-all" | head -n 30 | indent || true
        fi
    else
        fail "ptdump agreement ($machine): the console did not answer 'ptdump kernel' after gdb detached"
        tail -n 10 "$log" | indent
    fi
    # The registers the console's `info` prints (for pl-sysreg under OpenOCD)
    # must be the live ones gdb read.
    mark=$(wc -l <"$log")
    printf 'info\r' >&3
    # The whole line: output after it (the next line or the prompt) shows
    # its newline went out, so a line still being printed is not compared.
    if wait_for_line_after "$log" "$mark" '^sysregs: ' 10; then
        local got want
        got=$(tail -n +"$((mark + 1))" "$log" | tr -d '\r' | grep -m1 '^sysregs: ' || true)
        want=$(cat "$tmp/$name.sysregs" 2>/dev/null || true)
        if [[ -n $want && $got == "$want" ]]; then
            pass "sysregs agreement ($machine): console 'info' prints the live TTBR1/TCR/MAIR/SCTLR gdb read"
        else
            fail "sysregs agreement ($machine): console '$got', gdb '$want'"
        fi
    else
        fail "sysregs agreement ($machine): the console's 'info' printed no sysregs line"
    fi
    printf 'halt\r' >&3
    local i
    for ((i = 0; i < 50; i++)); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
    stop_qemu
}

wait_for_line_after() { # file, line count to skip, regex, seconds: a whole matching line
    local i
    for ((i = 0; i < $4 * 10; i++)); do
        tail -n +"$(($2 + 1))" "$1" | tr -d '\r' | awk -v re="$3" '$0 ~ re { seen = 1; next } seen { found = 1; exit } END { exit !found }' && return 0
        kill -0 "$qpid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

wait_for_after() { # file, line count to skip, fixed string, seconds
    local i
    for ((i = 0; i < $4 * 10; i++)); do
        tail -n +"$(($2 + 1))" "$1" | grep -qF -- "$3" && return 0
        kill -0 "$qpid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

for machine in virt virt,virtualization=on; do
    in_budget "gdb agreement ($machine)" && kernel_run "$machine"
done

# ---------------------------------------------------------------------------
# 2a. Processes: pl-procs/pl-vmas read the kernel's mirror PAGELAB_DEBUG_PROCS
#     and must agree with the console's `ps` / `P maps` (the real process
#     table and VMA lists), with the mmap layout (MMAP_BASE, one guard page
#     between regions) and with the DWARF layout of the mirror's structs. Then
#     the kernel is stopped twice inside B's task, at its first EL0
#     instruction and in its page fault: the CPU pl-procs names must be the
#     one that stopped, and its TTBR0_EL1 must hold B's pgd and ASID.
# ---------------------------------------------------------------------------
cat >"$tmp/procs-checks.py" <<'PYEOF'
# Runs inside gdb after `source gdb/pagelab.py` and checks-lib.py; prints
# OK/MISMATCH lines and a final "PROCS-CHECKS: PASS|FAIL" line.
import re

cdir = os.environ["PL_CONSOLE"]
page = {"4K": 0x1000, "16K": 0x4000, "64K": 0x10000}[os.environ.get("PL_GRANULE", "4K")]
# thp=always: the largest anonymous folio is a PMD block.
folio = {0x1000: 2 << 20, 0x4000: 32 << 20, 0x10000: 512 << 20}[page]
MMAP_BASE = 0x1000000000
AGENT_VA = 0x400000
K = 1024
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+|\?)\s+(\d+|\?)\s+(\d+)(?:\s+(\S+))?\s*$")


def console(name):
    with open(os.path.join(cdir, name)) as f:
        return f.read()


def rows(text):
    """{pid: (pid, ppid, name, pgd, asid, gen, vmas, cpu)} from ps / pl-procs."""
    out = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            g = m.groups()
            out[int(g[0])] = (int(g[0]), int(g[1]), g[2], int(g[3], 16), g[4], g[5], int(g[6]), g[7])
    return out


def maps_lines(text):
    return [l.rstrip() for l in text.splitlines() if l.startswith("0x")]


def align_up(v, a):
    return (v + a - 1) // a * a


def check_layout():
    """pagelab.py's offsets == the kernel's DWARF for the mirror's structs."""
    t = pl.live_debug_table()
    for sname, fields in sorted(pl.DT_OFFSETS.items()):
        try:
            ty = gdb.lookup_type("pagelab::proc::debug_table::" + sname)
        except gdb.error as ex:
            bad("DWARF: no type %s: %s" % (sname, ex))
            continue
        have = dict((f.name, f.bitpos // 8) for f in ty.fields())
        diff = ["%s: pagelab.py %d, kernel %s" % (f, o, have.get(f)) for f, o in sorted(fields.items()) if have.get(f) != o]
        if sname == "DebugVma" and ty.sizeof != pl.DT_VMA_SIZE:
            diff.append("size %d, pagelab.py %d" % (ty.sizeof, pl.DT_VMA_SIZE))
        if sname == "DebugProc" and (have.get("vmas") != t.vma_off or ty.sizeof != t.proc_size):
            diff.append("vmas at %s size %d; header says %d, %d" % (have.get("vmas"), ty.sizeof, t.vma_off, t.proc_size))
        if sname == "DebugTable" and have.get("procs") != t.header_size:
            diff.append("procs at %s, header_size %d" % (have.get("procs"), t.header_size))
        if diff:
            bad("DWARF layout of %s differs: %s" % (sname, "; ".join(diff)))
        else:
            ok("DWARF layout of %s == pagelab.py's (%d fields)" % (sname, len(fields)))
    return t


def expected_vmas():
    """What the console's commands must have made, from the mmap rules alone."""
    b = MMAP_BASE
    big = align_up(b + 256 * K + page, folio)
    shm = big + 128 * K + page
    a = [(b, b + 64 * K, "rw-p", ""), (b + 64 * K, b + 128 * K, "r--p", ""),
         (b + 128 * K, b + 256 * K, "rw-p", "NOHUGEPAGE"), (big, big + 128 * K, "rw-p", ""),
         (shm, shm + 64 * K, "rw-s", "SHARED")]
    y = b + 64 * K + page
    return {"A": a, "B": [(b, b + 64 * K, "rw-p", ""), (y, y + 64 * K, "rw-p", "")], "C": a}


def check_idle():
    t = check_layout()
    ps = rows(console("ps"))
    out = run("pl-procs")
    got = rows(out)
    names = dict((r[2], r) for r in got.values())
    if sorted(names) == ["A", "B", "C"] and len(got) == 3:
        ok("pl-procs lists A, B, C (pids %s)" % ", ".join("%s=%d" % (n, names[n][0]) for n in sorted(names)))
    else:
        bad("pl-procs does not list exactly A, B, C:\n" + out)
        return None
    if dict((k, v[:7]) for k, v in got.items()) == dict((k, v[:7]) for k, v in ps.items()):
        ok("pl-procs == console ps: pid, ppid, name, pgd, ASID, generation, VMA count of all 3")
    else:
        bad("pl-procs differs from the console's ps:\n%s\nconsole:\n%s" % (out, console("ps")))
    a, b, c = names["A"], names["B"], names["C"]
    if a[1] == 0 and b[1] == 0 and c[1] == a[0] and len(set([a[0], b[0], c[0]])) == 3 and b[0] > a[0]:
        ok("ppids: A and B spawned from the console (0), C forked from A (ppid %d)" % a[0])
    else:
        bad("pids/ppids wrong: %s" % [a, b, c])
    if all(r[7] == "-" for r in got.values()) and "running: no CPU runs a process's task" in out:
        ok("pl-procs: no CPU runs a task while the console waits")
    else:
        bad("pl-procs claims a running task at the prompt:\n" + out)
    want = expected_vmas()
    for n in ("A", "B", "C"):
        gl = maps_lines(run("pl-vmas %s" % n))
        cl = maps_lines(console("maps-" + n))
        if gl and gl == cl:
            ok("pl-vmas %s == console '%s maps' (%d VMAs)" % (n, n, len(gl)))
        else:
            bad("pl-vmas %s differs from the console:\n  gdb:     %s\n  console: %s" % (n, "\n           ".join(gl), "\n           ".join(cl)))
        if len(gl) != names[n][6]:
            bad("pl-vmas %s prints %d VMAs, pl-procs counts %d" % (n, len(gl), names[n][6]))
        got_v = []
        for l in gl:
            # START-END PERM SIZE folio FOLIO FLAGS [file ID pgoff N]
            w = l.split()
            s, e = w[0].split("-")
            got_v.append((int(s, 16), int(e, 16), w[1], w[5]))
        layout_ok = len(got_v) == len(want[n]) + 1 and got_v[0][0] == AGENT_VA and got_v[0][2] == "r-xp"
        for g, w in zip(got_v[1:], want[n]):
            layout_ok = layout_ok and g[:3] == w[:3] and w[3] in g[3]
        if layout_ok:
            ok("pl-vmas %s: agent at %#x, then %s" % (n, AGENT_VA, ", ".join("%#x-%#x %s" % g[:3] for g in got_v[1:])))
        else:
            bad("pl-vmas %s: not the expected layout (MMAP_BASE %#x, guard page %#x, folio %#x):\n  got  %s\n  want %s" % (
                n, MMAP_BASE, page, folio, ["%#x-%#x %s %s" % g for g in got_v],
                ["agent"] + ["%#x-%#x %s %s" % w for w in want[n]]))
    if maps_lines(run("pl-vmas %d" % b[0])) == maps_lines(run("pl-vmas B")):
        ok("pl-vmas %d (by pid) == pl-vmas B" % b[0])
    else:
        bad("pl-vmas by pid differs from by name")
    try:
        gdb.execute("pl-vmas nosuch", to_string=True)
        bad("pl-vmas nosuch did not fail")
    except gdb.error as ex:
        if "no process 'nosuch'" in str(ex):
            ok("pl-vmas nosuch: %s" % ex)
        else:
            bad("pl-vmas nosuch: unexpected error %s" % ex)
    return names


def check_stop(where, names, want_el):
    """The kernel stopped inside B's task: the selected CPU must be the one
    pl-procs says runs B, and its TTBR0 must be B's pgd and ASID."""
    cpu = pl.selected_cpu()
    el = pl.current_el()
    if el != want_el:
        bad("%s: CPU at EL%s, expected EL%d" % (where, el, want_el))
    out = run("pl-procs")
    got = rows(out)
    bpid = names["B"][0]
    br = got.get(bpid)
    others = [r for p, r in got.items() if p != bpid and r[7] != "-"]
    if br and br[7] == "cpu%d" % cpu and not others and ("running: cpu%d: pid %d tid" % (cpu, bpid)) in out:
        ok("%s (EL%s, cpu%d): pl-procs says B (pid %d) runs on cpu%d, nothing else runs" % (where, el, cpu, bpid, cpu))
    else:
        bad("%s: stopped on cpu%s, pl-procs says:\n%s" % (where, cpu, out))
        return
    ttbr0 = pl.need_reg("TTBR0_EL1")
    asid = int(br[4], 16) if br[4] != "?" else None
    if ttbr0 & 0x0000fffffffffffe == br[3] and asid is not None and ttbr0 >> 48 == asid and br[5] != "0":
        ok("%s: TTBR0_EL1 %#x = B's pgd %#x, ASID %#x (generation %s)" % (where, ttbr0, br[3], asid, br[5]))
    else:
        bad("%s: TTBR0_EL1 %#x, but pl-procs has B at pgd %#x ASID %s gen %s" % (where, ttbr0, br[3], br[4], br[5]))
    # The software-walk fallback decodes the same table as gdb's own reads.
    base = pl.live_debug_table().base
    try:
        gdb.selected_inferior().read_memory(base, 8)
        how = "gdb's MMU reads work here"
    except gdb.MemoryError:
        how = "gdb's MMU read refused here, so pl-procs used the walk"
    try:
        same = pl.format_procs(pl.read_debug_table(pl._read_kernel_phys, base)) == pl.format_procs(pl.live_debug_table())
    except Exception as ex:
        same = False
        how = "walk failed: %s" % ex
    if same:
        ok("%s: table read through a software walk of the live tables == normal read (%s)" % (where, how))
    else:
        bad("%s: the software-walk read of the table differs (%s)" % (where, how))


def stop_at(spec, where):
    gdb.execute("delete", to_string=True)
    gdb.execute("break %s" % spec, to_string=True)
    print("PL-CONTINUING %s" % where)
    sys.stdout.flush()
    gdb.execute("continue", to_string=True)


try:
    names = check_idle()
    if names:
        # The console sends `B write y 0x33` once it sees PL-CONTINUING.
        stop_at("*%#x" % AGENT_VA, "agent entry")
        check_stop("at B's first EL0 instruction", names, 0)
        stop_at("pagelab::proc::handle_user_fault", "B's fault")
        check_stop("in B's page fault", names, 1)
        far = int(gdb.parse_and_eval("$x0")) & pl.MASK64
        cur = maps_lines(run("pl-vmas current"))
        y = maps_lines(console("maps-B"))[-1]
        ys, ye = [int(x, 16) for x in y.split()[0].split("-")]
        if cur == maps_lines(console("maps-B")) and ys <= far < ye:
            ok("in B's page fault: pl-vmas current == B's maps, the fault address %#x is in y (%#x-%#x)" % (far, ys, ye))
        else:
            bad("in B's page fault: far %#x, y %#x-%#x, pl-vmas current:\n%s" % (far, ys, ye, "\n".join(cur)))
        gdb.execute("delete", to_string=True)
except Exception as ex:
    bad("exception in the checks: %r" % ex)

print("PROCS-CHECKS: %s (%d problems)" % ("FAIL" if fails else "PASS", len(fails)))
PYEOF

prompts() { grep -o 'pagelab> ' "$1" 2>/dev/null | wc -l; }

console_cmd() { # log, command, seconds: runs a console command, prints its output
    local log=$1 n off i
    n=$(prompts "$log")
    off=$(stat -c %s "$log")
    printf '%s\r' "$2" >&3
    for ((i = 0; i < $3 * 10; i++)); do
        if (($(prompts "$log") > n)); then
            tail -c +"$((off + 1))" "$log" | tr -d '\r' | sed '1d;$d'
            return 0
        fi
        kill -0 "$qpid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

procs_run() {
    local name=procs log=$tmp/procs.log cdir=$tmp/procs-console
    mkdir -p "$cdir"
    if ! start_qemu "$name" -M virt -cpu "$cpu" -smp 2 -m 1G -nodefaults -no-user-config \
        -display none -serial stdio -monitor none -no-reboot -kernel "$img" -append "pagelab.mode=console"; then
        fail "processes: QEMU did not start"
        return
    fi
    if ! wait_for "$log" "pagelab> " 30; then
        fail "processes: no console prompt within 30 s"
        tail -n 20 "$log" "$tmp/$name.err" 2>/dev/null | indent
        stop_qemu
        return
    fi
    # Two processes with split, THP, memfd and plain mappings, and a fork.
    local c out errs=()
    for c in "spawn A" "A mmap buf 256K" "A write buf+0x10000 0x5a" "A mprotect buf+0x10000:0x10000 prot=r" \
        "A madvise buf+0x20000:0x20000 nohugepage" "A mmap big 128K thp=always" "A mmap shm 64K memfd=f1 shared" \
        "spawn B" "B mmap x 64K" "B mmap y 64K" "B write x 0x11" "A fork C"; do
        if ! out=$(console_cmd "$log" "$c" 10) || grep -qE '^(error|FAIL)' <<<"$out"; then
            errs+=("'$c': ${out:-no prompt}")
        fi
    done
    console_cmd "$log" "ps" 10 >"$cdir/ps" || errs+=("'ps': no prompt")
    for c in A B C; do
        console_cmd "$log" "$c maps" 10 >"$cdir/maps-$c" || errs+=("'$c maps': no prompt")
    done
    if [[ ${#errs[@]} -gt 0 ]]; then
        fail "processes: console commands failed: ${errs[*]}"
        stop_qemu
        return
    fi
    cat >"$tmp/$name.gdb" <<EOF
set pagination off
set confirm off
target remote 127.0.0.1:$port
source $root/gdb/pagelab.py
source $tmp/checks-lib.py
source $tmp/procs-checks.py
EOF
    local gout=$tmp/$name.gdb.out status=0 gpid
    : >"$gout"
    (cd "$root" && PL_GRANULE=$granule PL_CONSOLE=$cdir \
        timeout -k 2 "$(tmo 40)" gdb-multiarch -q -nx -batch "$elf" -x "$tmp/$name.gdb" >"$gout" 2>&1) &
    gpid=$!
    # gdb checks the idle kernel, then continues it to a breakpoint at the
    # agent's entry: start a command in B that runs it (and faults).
    if wait_for "$gout" "PL-CONTINUING agent entry" 30; then
        printf 'B write y 0x33\r' >&3
    fi
    wait "$gpid" || status=$?
    echo "  [processes] gdb on a kernel with processes A, B and C (-smp 2):"
    grep -E '^(OK|MISMATCH|PROCS-CHECKS)' "$gout" | sed 's/^/    /' || true
    if [[ $status -eq 0 ]] && grep -q '^PROCS-CHECKS: PASS' "$gout" && ! grep -q '^MISMATCH' "$gout"; then
        pass "processes: pl-procs/pl-vmas == console ps/maps and the mmap layout; B's CPU and TTBR0 at two stops"
    else
        fail "processes: gdb status $status"
        grep -vE '^(OK|MISMATCH|PROCS-CHECKS|PL-CONTINUING)' "$gout" | tail -n 30 | indent
    fi
    # The kernel goes on after gdb detaches: B's write completes.
    if out=$(console_cmd "$log" "B check y 0x33" 15) && grep -q '^PASS' <<<"$out"; then
        pass "processes: the kernel resumed after gdb; B's write at the breakpoints completed"
    else
        fail "processes: after gdb detached, 'B check y 0x33' gave: ${out:-no prompt}"
        tail -n 10 "$log" | indent
    fi
    printf 'halt\r' >&3
    local i
    for ((i = 0; i < 50; i++)); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
    stop_qemu
}
in_budget "processes" && procs_run

# ---------------------------------------------------------------------------
# 2b. A dead kernel: pagelab.crash=unmapped-read panics on a read of an
#     unmapped address; QEMU pauses instead of resetting, and pl-esr/pl-walk
#     must decode the live ESR_EL1/FAR_EL1 the way the kernel's report did.
# ---------------------------------------------------------------------------
crash_run() {
    local name=crash log=$tmp/crash.log
    if ! start_qemu "$name" -M virt -cpu "$cpu" -smp 1 -m 1G -nodefaults -no-user-config \
        -display none -serial stdio -monitor none -action reboot=shutdown,shutdown=pause \
        -kernel "$img" -append "pagelab.crash=unmapped-read"; then
        fail "crashed kernel: QEMU did not start"
        return
    fi
    if ! wait_for "$log" "KERNEL PANIC" 15; then
        fail "crashed kernel: no KERNEL PANIC report within 15 s"
        tail -n 20 "$log" | indent
        stop_qemu
        return
    fi
    sleep 0.5
    local kesr kfar
    kesr=$(grep -oE 'ESR 0x[0-9a-f]+' "$log" | head -n 1 | grep -oE '0x[0-9a-f]+' || true)
    kfar=$(grep -oE 'FAR 0x[0-9a-f]+' "$log" | head -n 1 | grep -oE '0x[0-9a-f]+' || true)
    cat >"$tmp/crash.gdb" <<EOF
set pagination off
set confirm off
target remote 127.0.0.1:$port
source $root/gdb/pagelab.py
echo ==ESR==\n
pl-esr
echo ==WALK==\n
pl-walk \$FAR_EL1
echo ==END==\n
EOF
    local out status=0
    out=$(cd "$root" && timeout -k 2 "$(tmo 30)" gdb-multiarch -q -nx -batch "$elf" -x "$tmp/crash.gdb" 2>&1) || status=$?
    stop_qemu
    local esr walk problems=()
    esr=$(sed -n '/^==ESR==/,/^==WALK==/p' <<<"$out")
    walk=$(sed -n '/^==WALK==/,/^==END==/p' <<<"$out")
    [[ $status -eq 0 ]] || problems+=("gdb status $status")
    [[ -n $kesr ]] && grep -qi "ESR_EL1 $kesr:" <<<"$esr" || problems+=("live ESR_EL1 is not the reported $kesr")
    grep -q "translation fault, level $hole_level" <<<"$esr" || problems+=("pl-esr: no 'translation fault, level $hole_level'")
    grep -q "WnR=0 (read)" <<<"$esr" || problems+=("pl-esr: no 'WnR=0 (read)'")
    [[ -n $kfar ]] && grep -q "FAR_EL1 $(printf '%#018x' "$kfar")" <<<"$esr" || problems+=("live FAR_EL1 is not the reported $kfar")
    grep -q "=> translation fault at level $hole_level" <<<"$walk" || problems+=("pl-walk \$FAR_EL1: no level $hole_level fault")
    if [[ ${#problems[@]} -eq 0 ]]; then
        pass "crashed kernel: pl-esr/pl-walk on the live ESR $kesr and FAR $kfar agree with the kernel's report"
    else
        fail "crashed kernel: ${problems[*]}"
        grep -v '^0x[0-9a-f]* in ' <<<"$out" | tail -n 20 | indent
    fi
}
in_budget "crashed kernel" && crash_run

# ---------------------------------------------------------------------------
# 3. Granule conformance against QEMU's walker (no kernel; -cpu max has
#    4K/16K/64K, LPA2, 52-bit PA and VA).
# ---------------------------------------------------------------------------
cat >"$tmp/granules.py" <<'PYEOF'
# pl-walk vs. QEMU's own walker (monitor gva2gpa) on synthetic tables.
# The gdbstub cannot write system registers, so they are set by stepping
# MSRs placed in RAM; every table set identity-maps that code page.
import struct
import sys

import gdb

pl = sys.modules["__main__"]

CODE = 0x40000000
PROG = [0xd5181005,   # msr sctlr_el1, x5   (MMU off; fetched through the previous tables)
        0xd5033fdf,   # isb
        0xd5182040,   # msr tcr_el1, x0
        0xd5182001,   # msr ttbr0_el1, x1
        0xd5182022,   # msr ttbr1_el1, x2
        0xd518a203,   # msr mair_el1, x3
        0xd5033fdf,   # isb
        0xd5181004,   # msr sctlr_el1, x4   (MMU on)
        0xd5033fdf,   # isb
        0x14000000]   # b .
LEAF = 0x0060000000000700          # PXN UXN AF SH=ISH AttrIndx 0, RW
CODE_ATTRS = 0x0040000000000780    # UXN AF SH=ISH ro: executable at EL1
G = {12: "4K", 14: "16K", 16: "64K"}
TG1 = {12: 0b10, 14: 0b01, 16: 0b11}
TG0 = {12: 0b00, 14: 0b10, 16: 0b01}


def tcr_value(upper, ps, tsz, ds, ips, tbi):
    t = (ips << 32) | (ds << 59)
    if upper:
        t |= (tsz << 16) | (TG1[ps] << 30) | (tbi << 38)
        t |= 16 | (TG0[12] << 14)                       # TTBR0: 4K identity map of the code
    else:
        t |= tsz | (TG0[ps] << 14) | (tbi << 37)
        t |= (16 << 16) | (TG1[12] << 30) | (1 << 23)   # TTBR1 disabled (EPD1)
    return t


def write_tables(fm):
    inf = gdb.selected_inferior()
    with pl.PhysMem():
        for pa, v in sorted(fm.m.items()):
            inf.write_memory(pa, struct.pack("<Q", v))


def program_mmu(tcr, ttbr0, ttbr1, mair):
    sctlr = pl.need_reg("SCTLR")
    for reg, val in (("x0", tcr), ("x1", ttbr0), ("x2", ttbr1), ("x3", mair),
                     ("x4", sctlr | 1), ("x5", sctlr & ~1), ("pc", CODE)):
        gdb.execute("set $%s = %#x" % (reg, val), to_string=True)
    for _ in range(9):
        gdb.execute("stepi", to_string=True)
    pc = int(gdb.parse_and_eval("$pc")) & pl.MASK64
    got = (pl.need_reg("TCR_EL1"), pl.need_reg("TTBR0_EL1"), pl.need_reg("TTBR1_EL1"), pl.need_reg("SCTLR") & 1)
    return pc == CODE + 0x24 and got == (tcr, ttbr0, ttbr1, 1), pc, got


def run(idx, cpu, upper, ps, tsz, ds=0, ips=5, tbi=0):
    tag = "%s %s T%dSZ=%d IPS=%d%s%s" % ("TTBR1" if upper else "TTBR0", G[ps], 1 if upper else 0, tsz, ips,
                                       " DS=1" if ds else "", " TBI" if tbi else "")
    tcr = tcr_value(upper, ps, tsz, ds, ips, tbi)
    regs = dict(cpu, TCR_EL1=tcr)
    hp = pl.half_params(regs, upper)
    hp0 = pl.half_params(regs, False)
    fm = pl.FakeMem(ps, base=0x41000000 + idx * 0x800000)
    root = fm.alloc(max(64, hp.first_entries * 8))
    strip = (lambda a: a & ~0x300) if hp.ds else (lambda a: a)   # DS=1: bits 9:8 are OA[51:50]
    page = 1 << ps
    base = hp.region_base()
    top = (base + (1 << hp.va_bits)) if not upper else 1 << 64
    checks = []  # (va, expect): True mapped, False unmapped, None: only agreement
    if upper:
        im = pl.FakeMem(12, base=0x40100000 + idx * 0x10000)
        iroot = im.alloc()
        pl.fake_map(im, hp0, iroot, CODE, CODE, 3, (CODE_ATTRS & ~0x300) if hp0.ds else CODE_ATTRS)
        write_tables(im)
        ttbr0, ttbr1 = iroot, root
    else:
        pl.fake_map(fm, hp, root, CODE, CODE, 3, strip(CODE_ATTRS))
        ttbr0, ttbr1 = root, 0
        checks.append((CODE + 0x40, True))
    regs.update(TTBR0_EL1=ttbr0, TTBR1_EL1=ttbr1)

    def free_at(va, lv):
        r = pl.walk(va, regs, fm.read)
        return r.fault is not None and r.steps and r.steps[-1].level <= lv and r.steps[-1].desc.kind == "none"

    # Pages near the top of the range: mapped, AF=0, empty, invalid non-zero, "block" at level 3.
    t0 = top - 8 * page
    pl.fake_map(fm, hp, root, t0, 0x48000000 + 3 * page, 3, strip(LEAF))
    checks.append((t0 + 0x128, True))
    pl.fake_map(fm, hp, root, t0 + page, 0x48000000 + 4 * page, 3, strip(LEAF) & ~0x400)
    checks.append((t0 + page + 8, None))
    checks.append((t0 + 2 * page, False))
    slot = pl.fake_map(fm, hp, root, t0 + 3 * page, 0x48000000 + 5 * page, 3, strip(LEAF))
    fm.write(slot, fm.m[slot] & ~1)
    checks.append((t0 + 3 * page, False))
    slot = pl.fake_map(fm, hp, root, t0 + 4 * page, 0x48000000 + 6 * page, 3, strip(LEAF))
    fm.write(slot, fm.m[slot] & ~2)
    checks.append((t0 + 4 * page, False))
    # Output address above the output size: address size fault.
    if hp.pa_bits < 48:
        pl.fake_map(fm, hp, root, t0 + 5 * page, 1 << hp.pa_bits, 3, strip(LEAF))
        checks.append((t0 + 5 * page + 0x20, False))
    lo = base + 37 * page
    pl.fake_map(fm, hp, root, lo, 0x48000000 + 9 * page, 3, strip(LEAF))
    checks.append((lo + 0x10, True))
    # A block at every level from the start level to 2, legal or not.
    for lv in range(max(hp.first_level, 0), 3):
        bsz = pl.level_size(ps, lv)
        legal = pl.block_allowed(ps, lv, hp.ds, hp.lpa)
        for k in range(1, 64):
            bva = (base + k * bsz) & pl.MASK64
            if (bva - base) + bsz > (1 << hp.va_bits) - 16 * page:
                break
            if free_at(bva, lv) and not (not upper and bva <= CODE < bva + bsz):
                bpa = bsz * 3 if bsz * 3 < (1 << hp.pa_bits) else bsz
                pl.fake_map(fm, hp, root, bva, bpa, lv, strip(LEAF))
                checks.append((bva + bsz // 2 + 0x18, legal))
                checks.append((bva + bsz - 8, legal))
                break
    # Out of range, the other half, a tagged address.
    if tsz > hp.min_tsz:
        checks.append(((base - (1 << 44)) & pl.MASK64 if upper else (1 << hp.va_bits) + page, False))
    checks.append(((~t0) & ~0xfff & pl.MASK64 if not upper else 0x0000400000000000, None))
    if tbi:
        checks.append((((t0 + 0x40) & ~(0xff << 56)) | (0x5a << 56), True))
    write_tables(fm)
    ok, pc, got = program_mmu(tcr, ttbr0, ttbr1, 0x0000000400ff)
    if not ok:
        print("MISMATCH %s: could not program the MMU (pc %#x, TCR/TTBR0/TTBR1/M %s)" % (
            tag, pc, [hex(g) for g in got]))
        return 1
    bad = 0
    for va, want in checks:
        r, _ = pl.pl_walk_result(va)
        ours = r.translated()
        theirs = pl.qemu_gva2gpa(va)
        if ours != theirs or (want is not None and (ours is not None) != want):
            bad += 1
            print("MISMATCH %s va %#x: pl-walk %s, gva2gpa %s, expected %s; %s" % (
                tag, va, ours and hex(ours), theirs and hex(theirs),
                {True: "mapped", False: "unmapped", None: "-"}[want], r.fault_str()))
            for line in pl.format_walk(r):
                print("    " + line)
    if bad:
        print("FAILED %s: %d of %d addresses disagree" % (tag, bad, len(checks)))
    else:
        print("OK %s: start level %d, %d addresses agree" % (tag, hp.first_level, len(checks)))
    return bad


CONFIGS = [
    # TTBR1?, granule, TxSZ, DS, IPS, TBI
    (True, 12, 16), (True, 12, 25), (True, 12, 34), (True, 12, 43),
    (True, 14, 16), (True, 14, 17), (True, 14, 28), (True, 14, 38),
    (True, 16, 16), (True, 16, 22), (True, 16, 35),
    (False, 12, 16), (False, 12, 33), (False, 14, 16), (False, 14, 28), (False, 16, 16), (False, 16, 22),
    (True, 12, 12, 1, 6), (True, 14, 12, 1, 6), (False, 12, 12, 1, 6), (False, 14, 13, 1, 6),
    (True, 12, 16, 1, 5),
    (True, 16, 12, 0, 6), (False, 16, 12, 0, 6),
    (True, 12, 16, 0, 2), (True, 16, 22, 0, 1), (True, 14, 20, 0, 0),
    (True, 12, 16, 0, 5, 1), (False, 14, 20, 0, 5, 1),
]


def main():
    cpu = {}
    for n in ("ID_AA64MMFR0_EL1", "ID_AA64MMFR2_EL1"):
        v = pl.read_reg(n)
        if v is not None:
            cpu[n] = v
    el = pl.current_el()
    if el != 1 or pl.need_reg("SCTLR") & 1:
        print("MISMATCH: expected a fresh CPU at EL1 with the MMU off (EL%s)" % el)
        return 1
    with pl.PhysMem():
        gdb.selected_inferior().write_memory(CODE, struct.pack("<%dI" % len(PROG), *PROG))
    bad = 0
    for i, c in enumerate(CONFIGS):
        b = run(i, cpu, *c)
        bad += b
    print("GRANULES: %s, %d configurations, %d mismatches" % ("PASS" if bad == 0 else "FAIL", len(CONFIGS), bad))


try:
    main()
except Exception as ex:
    print("MISMATCH: exception %r" % ex)
    print("GRANULES: FAIL")
PYEOF

if [[ $granule != 4K ]]; then
    echo "  [granules] synthetic-table conformance runs once, with the 4K kernel's run"
elif ! in_budget "granule conformance"; then
    :
elif start_qemu granules -M virt -cpu max -smp 1 -m 1G -nodefaults -no-user-config -display none \
    -serial none -monitor none -no-reboot -S; then
    cat >"$tmp/granules.gdb" <<EOF
set pagination off
set confirm off
set architecture aarch64
target remote 127.0.0.1:$port
source $root/gdb/pagelab.py
source $tmp/granules.py
EOF
    status=0
    out=$(timeout -k 2 "$(tmo 40)" gdb-multiarch -q -nx -batch -x "$tmp/granules.gdb" 2>&1) || status=$?
    stop_qemu
    echo "  [granules] pl-walk vs. QEMU's walker on synthetic tables (-cpu max, no kernel):"
    grep -E '^(OK|FAILED|MISMATCH|GRANULES)' <<<"$out" | sed 's/^/    /' || true
    if [[ $status -eq 0 ]] && grep -q '^GRANULES: PASS' <<<"$out" && ! grep -qE '^(MISMATCH|FAILED)' <<<"$out"; then
        pass "granule conformance: $(grep '^GRANULES:' <<<"$out" | sed 's/^GRANULES: PASS, //')"
    else
        fail "granule conformance: gdb status $status"
        grep -vE '^(OK|FAILED|MISMATCH|GRANULES)|^0x[0-9a-f]+ in \?\? \(\)$' <<<"$out" | tail -n 20 | indent
    fi
else
    fail "granule conformance: QEMU did not start"
fi

echo "gdb-agreement: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
