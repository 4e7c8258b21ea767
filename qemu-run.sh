#!/usr/bin/env bash
# pagelab: build the kernel and run it under QEMU. See --help.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

TARGET=aarch64-unknown-none-softfloat
BOARD=virt
UART=pl011
CPU=cortex-a72
SMP=1
MEM=1G
GRANULE=4K
VA_BITS=48
GIC=3
PROFILE=release
EL2=0
GDB=0
SCRIPT=
APPEND=
TIMEOUT=
VERBOSE=0
COMMAND=console
# torture: seed (empty: from the clock), ops, failure rate, op list to replay
T_SEED=
T_OPS=20000
T_FAIL=
T_REPLAY=
T_SHRINK=1
FIXED_OPTS=    # options a Raspberry Pi machine fixes itself (--smp, --mem, --el2, ...)

usage() {
    cat <<'EOF'
Usage: ./qemu-run.sh [OPTIONS] [COMMAND]

Build pagelab and run it under qemu-system-aarch64.

Commands:
  (none)            build and boot to the interactive console (Ctrl-A x quits QEMU)
  test              run every test: host unit tests, in-kernel tests under QEMU
                    (EL1/EL2 entry, 1 and 4 CPUs, cortex-a53/a72/max), scenario
                    scripts, the extra checks in tests/extra/, and the in-kernel
                    tests and four scripts on raspi4b and raspi3b. Ends with
                    "N passed, M failed"; exit status is non-zero on any failure.
  build             build the kernel ELF and flat image only
  sdcard DIR        with --board raspi4b|raspi3b: write kernel8.img, config.txt and
                    cmdline.txt for a real board's boot partition into DIR
                    (untested on hardware; see docs/BRINGUP.md)
  bench             measure in guest instructions under QEMU icount, with the
                    flags of ../shared/linux-anchor (-M virt -cpu max -smp 1 -m 1G
                    -icount shift=0,sleep=off -seed 1); prints "bench: NAME UNIT VALUE"
                    lines (see docs/PERFORMANCE.md)
  gdb               start gdb-multiarch on the kernel ELF, attached to a QEMU that
                    was started with --gdb, with gdb/pagelab.py loaded
  torture [--seed N] [--ops N] [--fail-alloc PPM] [--replay FILE]
                    a seeded random run of scenario lines (every kind of mmap,
                    fork, exit, munmap/mprotect/madvise, EL0 writes and checks,
                    pins) checked after every op against a reference model
                    (kernel/src/torture). --ops defaults to 20000, --seed to the
                    clock (printed); --fail-alloc makes PPM per million frame,
                    table and heap allocations fail while op lines run. The last
                    line is "torture: N ops, M divergences, K injected failures";
                    exit status 0 only when M is 0. On a divergence the op list
                    is shrunk by delta debugging (replay runs; --no-shrink skips
                    it) and printed as a scenario script that reproduces it with
                    --script. --replay FILE runs the op lines of FILE instead

Options:
  --script FILE     run FILE (scenario language, see docs/SCENARIOS.md) instead of
                    the interactive console; exit status 0 only if it passed
  --el2             enter the kernel at EL2 (-M virt,virtualization=on)
  --smp N           number of CPUs (default 1, at most 8)
  --cpu NAME        cortex-a53 | cortex-a72 | max (default cortex-a72)
  --mem SIZE        RAM size, e.g. 512M, 1G, 4G (default 1G)
  --board NAME      virt (default) | raspi4b | raspi3b: QEMU's Raspberry Pi 4 B /
                    3 B machines, with the devicetree boards/NAME.dts (compiled
                    with dtc). They have 4 CPUs and a fixed RAM size (2G / 1G;
                    QEMU gives the kernel the part below the VideoCore's share),
                    enter the kernel at EL2 and start the secondaries through
                    spin tables; --smp, --mem, --cpu, --gic and --el2 do not
                    apply. raspi3b has no GIC: its interrupts go through the BCM2836
                    ARM-local controller (timer, mailbox IPIs)
  --uart pl011|mini with --board: the console on the PL011 (default) or on the
                    BCM2835 mini UART (QEMU's second serial port; the kernel
                    gets pagelab.uart=serial1). With sdcard: which UART the
                    board's GPIO 14/15 carry (mini keeps Bluetooth on the PL011)
  --va-bits 39|48   user (TTBR0) address bits: 48 (default) or 39 (one level
                    fewer of user tables; the kernel half stays 48-bit)
  --granule SIZE    translation granule: 4K (default), 16K or 64K. Cortex-A53 and
                    Cortex-A72 have no 16K granule: use --cpu max with 16K
  --gic 2|3         interrupt controller: GICv3 (default, -M virt,gic-version=3)
                    or GICv2 (QEMU's own default for virt); the kernel uses
                    whichever the devicetree names
  --gdb             start QEMU halted, waiting for GDB on tcp::1234
  --release         optimised build, with debug info (default)
  --debug           unoptimised build
  --append "ARGS"   extra kernel bootargs, e.g. "loglevel=debug"
  --timeout SECS    kill QEMU after SECS (non-interactive runs; default 300)
  -v, --verbose     print the commands being run
  -h, --help        this text

Kernel bootargs understood by pagelab:
  pagelab.mode=console|test|script|torture   what to run after boot
  pagelab.torture=SEED,OPS|replay    the torture run (replay: the initrd's op lines)
  pagelab.torture-verbose=1          print every line the torture run executes
  pagelab.torture-script=1           print them as a scenario script (script: ...)
  pagelab.exit=semihosting           tell QEMU the exit status (qemu-run.sh sets it)
  loglevel=error|warn|info|debug|trace
  pagelab.crash=stack-overflow|unmapped-read|undefined-instruction|panic
                                     crash on purpose (tests of the crash reports)

Missing tools are installed on Debian/Ubuntu: the Rust toolchain and targets from
rust-toolchain.toml (rustup), qemu-system-arm >= 9 (from bookworm-backports on
Debian 12) and gdb-multiarch (apt).
EOF
}

die() { echo "qemu-run.sh: $*" >&2; exit 1; }
say() { echo "pagelab: $*" >&2; }
run() { [[ $VERBOSE == 1 ]] && echo "+ $*" >&2; "$@"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --script) [[ $# -ge 2 ]] || die "--script needs a FILE"; SCRIPT=$2; COMMAND=script; shift ;;
        --el2) EL2=1; FIXED_OPTS+=" --el2" ;;
        --smp) [[ $# -ge 2 && $2 =~ ^[1-8]$ ]] || die "--smp needs a number from 1 to 8"; SMP=$2; FIXED_OPTS+=" --smp"; shift ;;
        --cpu) [[ $# -ge 2 ]] || die "--cpu needs a NAME"; CPU=$2; FIXED_OPTS+=" --cpu"; shift
               case $CPU in cortex-a53|cortex-a72|max) ;; *) die "unsupported --cpu '$CPU' (cortex-a53, cortex-a72, max)";; esac ;;
        --mem) [[ $# -ge 2 && $2 =~ ^[0-9]+[MG]$ ]] || die "--mem needs a size like 512M or 2G"; MEM=$2; FIXED_OPTS+=" --mem"; shift ;;
        --board) [[ $# -ge 2 ]] || die "--board needs a NAME"; BOARD=$2; shift
                 case $BOARD in virt|raspi3b|raspi4b) ;;
                                *) die "unknown board '$BOARD' (virt, raspi4b, raspi3b)";; esac ;;
        --uart) [[ $# -ge 2 ]] || die "--uart needs pl011 or mini"; UART=$2; shift
                case $UART in pl011|mini) ;; *) die "unknown --uart '$UART' (pl011, mini)";; esac ;;
        --va-bits) [[ $# -ge 2 && ( $2 == 39 || $2 == 48 ) ]] || die "--va-bits needs 39 or 48"; VA_BITS=$2; shift ;;
        --granule) [[ $# -ge 2 ]] || die "--granule needs a SIZE"; GRANULE=${2^^}; shift
                   case $GRANULE in 4K|16K|64K) ;; *) die "unknown granule '$2' (4K, 16K or 64K)";; esac ;;
        --gic) [[ $# -ge 2 && $2 =~ ^[23]$ ]] || die "--gic needs 2 or 3"; GIC=$2; FIXED_OPTS+=" --gic"; shift ;;
        --gdb) GDB=1 ;;
        --release) PROFILE=release ;;
        --debug) PROFILE=debug ;;
        --append) [[ $# -ge 2 ]] || die "--append needs ARGS"; APPEND=$2; shift ;;
        --timeout) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--timeout needs SECS"; TIMEOUT=$2; shift ;;
        -v|--verbose) VERBOSE=1 ;;
        test|build|gdb|bench|torture) COMMAND=$1 ;;
        --seed) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--seed needs a number"; T_SEED=$2; shift ;;
        --ops) [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || die "--ops needs a number > 0"; T_OPS=$2; shift ;;
        --fail-alloc) [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -le 1000000 ]] || die "--fail-alloc needs PPM (0..1000000)"
                      T_FAIL=$2; shift ;;
        --replay) [[ $# -ge 2 ]] || die "--replay needs a FILE"; T_REPLAY=$2; shift ;;
        --no-shrink) T_SHRINK=0 ;;
        sdcard) [[ $# -ge 2 ]] || die "sdcard needs a DIR"; COMMAND=sdcard; SDDIR=$2; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

if [[ $COMMAND != torture && ( -n $T_SEED$T_FAIL$T_REPLAY || $T_OPS != 20000 || $T_SHRINK == 0 ) ]]; then
    die "--seed, --ops, --fail-alloc, --replay and --no-shrink belong to the torture command"
fi
# The torture command picks the CPU that has the granule (16K: -cpu max).
if [[ $COMMAND == torture && $GRANULE == 16K && $FIXED_OPTS != *--cpu* ]]; then
    CPU=max
fi
if [[ $BOARD != virt && $COMMAND == test ]]; then
    die "'test' runs the boards itself (virt, then raspi4b and raspi3b); leave out --board"
fi
if [[ $UART == mini && $BOARD == virt ]]; then
    die "--uart mini needs --board raspi4b or raspi3b (virt has only a PL011)"
fi
if [[ $BOARD != virt && -n $FIXED_OPTS ]]; then
    die "--board $BOARD fixes its CPUs, RAM, entry EL and interrupt controller;$FIXED_OPTS do(es) not apply"
fi

# ---------------------------------------------------------------- dependencies

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
    else return 1; fi
}

qemu_ok() {
    command -v qemu-system-aarch64 >/dev/null || return 1
    local v
    v=$(qemu-system-aarch64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
    [[ -n $v && $v -ge 9 ]]
}

apt_install() { # packages...; uses bookworm-backports on Debian 12
    command -v apt-get >/dev/null || return 1
    local codename=
    [[ -r /etc/os-release ]] && codename=$(. /etc/os-release; echo "${VERSION_CODENAME:-}")
    local target=()
    if [[ $codename == bookworm ]]; then
        if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            say "adding bookworm-backports to apt sources (QEMU >= 9 lives there on Debian 12)"
            echo "deb http://deb.debian.org/debian bookworm-backports main" |
                as_root tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null || return 1
        fi
        target=(-t bookworm-backports)
    fi
    say "apt-get update"
    as_root apt-get update -qq >/dev/null || return 1
    say "installing $* ${target[*]:+(${target[*]})}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${target[@]}" "$@" >/dev/null
}

ensure_deps() {
    command -v cargo >/dev/null && command -v rustup >/dev/null ||
        die "Rust is not installed. Install rustup (https://rustup.rs), then run this again; rust-toolchain.toml selects the toolchain."
    local chan
    chan=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
    if ! rustup toolchain list | grep -q "^$chan"; then
        say "installing Rust toolchain $chan (from rust-toolchain.toml)"
        rustup toolchain install "$chan" --profile minimal >/dev/null
    fi
    local installed
    installed=$(rustup +"$chan" target list --installed)
    for t in aarch64-unknown-none-softfloat aarch64-unknown-none; do
        grep -qx "$t" <<<"$installed" || { say "adding Rust target $t"; rustup +"$chan" target add "$t" >/dev/null; }
    done
    if ! rustup +"$chan" component list --installed | grep -q '^llvm-tools'; then
        say "adding Rust component llvm-tools"
        rustup +"$chan" component add llvm-tools >/dev/null
    fi
    if ! qemu_ok; then
        say "QEMU >= 9 (qemu-system-aarch64) is missing; installing qemu-system-arm"
        apt_install qemu-system-arm || true
        qemu_ok || die "could not install QEMU >= 9. Install qemu-system-aarch64 version 9 or newer
  (Debian 12: apt-get install -t bookworm-backports qemu-system-arm; Ubuntu 24.10+: apt-get install qemu-system-arm)"
        say "$(qemu-system-aarch64 --version | head -n1)"
    fi
    if ! command -v dtc >/dev/null; then
        say "installing device-tree-compiler (dtc, for the Raspberry Pi devicetrees in boards/)"
        apt_install device-tree-compiler || say "warning: could not install device-tree-compiler (needed for --board raspi3b/raspi4b)"
    fi
    if ! command -v gdb-multiarch >/dev/null; then
        say "installing gdb-multiarch"
        apt_install gdb-multiarch || say "warning: could not install gdb-multiarch (needed for 'gdb' and the GDB test)"
    fi
}

# ---------------------------------------------------------------- build

# Each granule is a separate build (cargo feature) in its own target dir.
set_paths() {
    if [[ $GRANULE == 4K ]]; then TDIR="$ROOT/target"; else TDIR="$ROOT/target/granule-${GRANULE,,}"; fi
    [[ $VA_BITS == 39 ]] && TDIR="$TDIR/va39"
    OUT="$TDIR/$TARGET/$PROFILE"
    ELF="$OUT/pagelab-kernel"
    IMG="$OUT/pagelab.img"
}
set_paths

check_granule_cpu() {
    if [[ $GRANULE == 16K && $CPU != max ]]; then
        die "$CPU has no 16K translation granule (ID_AA64MMFR0_EL1.TGran16 = 0); use --cpu max with --granule 16K"
    fi
}
check_granule_cpu

build() {
    local features="granule-${GRANULE,,}"
    [[ $VA_BITS == 39 ]] && features+=",va39"
    local flags=(--no-default-features --features "$features" --target-dir "$TDIR")
    [[ $PROFILE == release ]] && flags+=(--release)
    run cargo build -q -p pagelab-kernel --target "$TARGET" "${flags[@]}" || return 1
    local host objcopy
    host=$(rustc -vV | sed -n 's/^host: //p')
    objcopy="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-objcopy"
    [[ -x $objcopy ]] || die "llvm-objcopy not found at $objcopy (rustup component add llvm-tools)"
    run "$objcopy" -O binary "$ELF" "$IMG" || return 1
}

# ---------------------------------------------------------------- QEMU

# The Raspberry Pi machines: fixed CPUs and RAM, a devicetree from boards/.
# FW_DT=mini|pl011 (tests only) makes it look like the Raspberry Pi
# firmware's tree in the one way that matters for the console: no
# stdout-path, and alias serial0 is the UART on GPIO 14/15 (the mini UART by
# default, the PL011 with dtoverlay=disable-bt).
board_dtb() { # prints the compiled DTB's path
    local dtb="$TDIR/$BOARD${FW_DT:+-fw-$FW_DT}.dtb" src="boards/$BOARD.dts"
    command -v dtc >/dev/null || die "dtc is missing (apt-get install device-tree-compiler)"
    mkdir -p "$TDIR"
    if [[ -n ${FW_DT:-} ]]; then
        [[ $FW_DT == mini || $FW_DT == pl011 ]] || die "FW_DT must be mini or pl011"
        local swap=() want=uart0
        if [[ $FW_DT == mini ]]; then
            swap=(-e 's/serial0 = &uart0;/serial0 = \&uart1;/' -e 's/serial1 = &uart1;/serial1 = \&uart0;/')
            want=uart1
        fi
        sed -e '/stdout-path/d' "${swap[@]}" "$src" >"$TDIR/$BOARD-fw-$FW_DT.dts"
        src=$TDIR/$BOARD-fw-$FW_DT.dts
        grep -q "serial0 = &$want;" "$src" || die "boards/$BOARD.dts: cannot make serial0 the $FW_DT UART (its aliases changed?)"
    fi
    dtc -q -I dts -O dtb -o "$dtb" "$src" || die "dtc failed on $src"
    echo "$dtb"
}

# qemu_cmd MODE [extra bootargs]: fills the array QEMU.
qemu_cmd() {
    local mode=$1; shift
    if [[ $BOARD != virt ]]; then
        local dtb mem=1G cpu=cortex-a53
        [[ $BOARD == raspi4b ]] && { mem=2G; cpu=cortex-a72; }
        dtb=$(board_dtb)
        # QEMU boots an arm64 Image on raspi at EL2; every core is there (-smp 4).
        # MODE_FROM_APPEND (tests only): pagelab.mode comes from $APPEND alone.
        local args="pagelab.exit=semihosting"
        [[ -z ${MODE_FROM_APPEND:-} ]] && args+=" pagelab.mode=$mode"
        args+=" pagelab.expect-el=2 $*"
        [[ $UART == mini && -z ${FW_DT:-} ]] && args+=" pagelab.uart=serial1"
        [[ -n $APPEND ]] && args+=" $APPEND"
        QEMU=(qemu-system-aarch64 -M "$BOARD" -cpu "$cpu" -smp 4 -m "$mem" -dtb "$dtb"
              -nodefaults -no-user-config -display none -no-reboot
              -semihosting-config enable=on,target=native
              -kernel "$IMG" -append "$args")
        # The mini UART is QEMU's second serial port: the first (the PL011)
        # goes nowhere, and the caller's -serial becomes the second.
        [[ $UART == mini ]] && QEMU+=(-serial null)
        return 0
    fi
    local machine=$BOARD
    [[ $EL2 == 1 ]] && machine+=",virtualization=on"
    machine+=",gic-version=$GIC"
    local args="pagelab.exit=semihosting pagelab.mode=$mode pagelab.expect-el=$((EL2 + 1)) $*"
    [[ -n $APPEND ]] && args+=" $APPEND"
    # shellcheck disable=SC2054  # commas are inside QEMU option values
    QEMU=(qemu-system-aarch64 -M "$machine" -cpu "$CPU" -smp "$SMP" -m "$MEM"
          -nodefaults -no-user-config -display none -no-reboot
          -semihosting-config enable=on,target=native
          -kernel "$IMG" -append "$args")
}

# Turns "backtrace:" addresses in a failed run's log into function names and
# source lines (with gdb-multiarch, which is installed anyway).
symbolize() { # log
    command -v gdb-multiarch >/dev/null && [[ -f $ELF ]] || return 0
    local addrs=() a
    mapfile -t addrs < <(sed -n '/^backtrace:/,/^[^ ]/s/^ *#[0-9]* *\(0x[0-9a-f]*\).*/\1/p' "$1" | head -n 24)
    [[ ${#addrs[@]} -gt 0 ]] || return 0
    local cmds=()
    for a in "${addrs[@]}"; do cmds+=(-ex "info symbol $a" -ex "info line *$a"); done
    echo "symbolized backtrace:"
    gdb-multiarch -q -batch -nx "$ELF" "${cmds[@]}" 2>/dev/null |
        sed -n 's/^\(.*\) in section .*/  \1/p; s/^Line \([0-9]*\) of "\([^"]*\)".*/      at \2:\1/p'
}

# Runs QEMU non-interactively. $1 = log file, rest = bootargs. Sets QSTATUS.
run_qemu_logged() {
    local log=$1; shift
    local mode=$1; shift
    qemu_cmd "$mode" "$@"
    QSTATUS=0
    [[ $VERBOSE == 1 ]] && echo "+ ${QEMU[*]}" >&2
    timeout -k 5 "${TIMEOUT:-300}" "${QEMU[@]}" -serial stdio -monitor none "${EXTRA_QEMU[@]}" </dev/null >"$log" 2>&1 || QSTATUS=$?
}

# Prints N M from the last "N passed, M failed" line of a log, or nothing.
# (Never fails: a run that crashed has no summary, and `set -e` must not
# end the whole test run there without saying which run it was.)
summary_of() {
    { tr -d '\r' <"$1" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n1 | sed -E 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/'; } || true
}

EXTRA_QEMU=()

cmd_console() {
    ensure_deps
    build
    qemu_cmd console
    if [[ $GDB == 1 ]]; then
        say "QEMU is waiting for GDB on tcp::1234. Attach with:"
        say "  ./qemu-run.sh gdb        (in another terminal), or"
        say "  gdb-multiarch -ex 'target remote :1234' -ex 'source gdb/pagelab.py' $ELF"
        QEMU+=(-s -S)
    fi
    say "Ctrl-A x quits QEMU"
    [[ $VERBOSE == 1 ]] && echo "+ ${QEMU[*]} -serial mon:stdio" >&2
    exec "${QEMU[@]}" -serial mon:stdio
}

cmd_script() {
    [[ -f $SCRIPT && -r $SCRIPT ]] || die "cannot read script '$SCRIPT'"
    ensure_deps
    build
    # shellcheck disable=SC2046  # bootargs are words
    qemu_cmd script $(sed -n 's/^# bootargs: //p' "$SCRIPT" | head -n 1)
    QEMU+=(-initrd "$SCRIPT")
    if [[ $GDB == 1 ]]; then
        say "QEMU is waiting for GDB on tcp::1234 (./qemu-run.sh gdb)"
        QEMU+=(-s -S)
    fi
    local status=0 log
    TMPLOG=$(mktemp); log=$TMPLOG
    trap 'rm -f "$TMPLOG"' EXIT
    [[ $VERBOSE == 1 ]] && echo "+ ${QEMU[*]}" >&2
    timeout -k 5 "${TIMEOUT:-300}" "${QEMU[@]}" -serial stdio -monitor none </dev/null 2>&1 | tee "$log" || true
    status=${PIPESTATUS[0]}
    local s
    s=$(summary_of "$log")
    if [[ $status -eq 0 && -n $s && ${s#* } == 0 ]]; then
        exit 0
    fi
    [[ $status -eq 124 ]] && say "timed out after ${TIMEOUT:-300} s"
    symbolize "$log" || true
    exit 1
}

cmd_gdb() {
    command -v gdb-multiarch >/dev/null || ensure_deps
    [[ -f $ELF ]] || { ensure_deps; build; }
    local extra=()
    [[ -f gdb/pagelab.py ]] && extra=(-ex 'source gdb/pagelab.py')
    exec gdb-multiarch -q "$ELF" -ex 'set pagination off' -ex 'target remote :1234' "${extra[@]}"
}

# ---------------------------------------------------------------- bench

BENCH_NAMES=(linear_map_build_blocks linear_map_build_blocks_table_bytes linear_map_build_pages
             linear_map_build_pages_table_bytes walker_entries_per_million_instructions
             null_syscall anon_write_fault anon_read_fault_zero write_after_zero_page fork_populated
             cow_write_child_copy cow_write_parent_reuse mprotect_ro_populated mprotect_rw_populated
             munmap_populated)

# Runs the benchmarks once; $1 = log. Returns non-zero if anything is missing.
run_bench() {
    local log=$1 status=0
    # shellcheck disable=SC2054  # commas are inside QEMU option values
    local q=(qemu-system-aarch64 -M virt -cpu max -smp 1 -m 1G -icount shift=0,sleep=off -seed 1
             -nodefaults -no-user-config -display none -no-reboot -semihosting-config enable=on,target=native
             -kernel "$IMG" -append "pagelab.exit=semihosting pagelab.mode=bench $APPEND" -serial stdio -monitor none)
    [[ $VERBOSE == 1 ]] && echo "+ ${q[*]}" >&2
    timeout -k 5 "${TIMEOUT:-600}" "${q[@]}" </dev/null >"$log" 2>&1 || status=$?
    local n missing=0
    local names=("${BENCH_NAMES[@]}")
    # 2M blocks (PMD THP) exist with the 4K granule only.
    [[ $GRANULE == 4K ]] && names+=(thp_write_fault_2M thp_read_fault_2M)
    for n in "${names[@]}"; do
        grep -qE "^bench: $n [^ ]+ [0-9]+" "$log" || { echo "missing measurement: $n" >&2; missing=1; }
    done
    [[ $status -eq 0 && $missing -eq 0 ]]
}

cmd_bench() {
    [[ $CPU == cortex-a72 || $CPU == max ]] || die "bench always uses -cpu max (the anchor's CPU)"
    CPU=max
    ensure_deps
    build
    local log
    TMPLOG=$(mktemp); log=$TMPLOG
    trap 'rm -f "$TMPLOG"' EXIT
    if run_bench "$log"; then
        grep -vE '^\s*$' "$log" | sed -n '/^pagelab bench:/,$p'
    else
        cat "$log"; die "bench failed"
    fi
}

# ---------------------------------------------------------------- test

PASSED=0
FAILED=0
LOGDIR="$ROOT/target/test-logs"

record() { # passed failed label detail
    PASSED=$((PASSED + $1)); FAILED=$((FAILED + $2))
    if [[ $2 -eq 0 ]]; then printf 'PASS %-44s %s\n' "$3" "$4"; else printf 'FAIL %-44s %s\n' "$3" "$4"; fi
}

show_log_tail() { tail -n 30 "$1" | sed 's/^/    | /'; symbolize "$1" | sed 's/^/    /' || true; }

test_host() {
    echo "== host unit tests (cargo test)"
    local log="$LOGDIR/host.log" status=0
    cargo test --workspace >"$log" 2>&1 || status=$?
    local p f
    p=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
    f=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
    if [[ $status -ne 0 && $f -eq 0 ]]; then f=1; fi
    record "$p" "$f" "host: cargo test" "($p passed, $f failed)"
    [[ $f -eq 0 ]] || show_log_tail "$log"
}

# Boots the in-kernel tests (pagelab.mode=test) with the current settings,
# logging to LOG, and records the result as LABEL.
run_kernel_tests() { # label log
    local label=$1 log=$2 s p f
    TIMEOUT=${TIMEOUT_KERNEL:-180} run_qemu_logged "$log" test
    s=$(summary_of "$log")
    if [[ -z $s ]]; then
        p=$(grep -c '^PASS ' "$log" || true); f=$(grep -c '^FAIL ' "$log" || true)
        record "$p" $((f + 1)) "$label" "no summary line (QEMU status $QSTATUS)"
        show_log_tail "$log"
    else
        p=${s% *}; f=${s#* }
        if [[ $QSTATUS -ne 0 && $f -eq 0 ]]; then f=1; fi
        record "$p" "$f" "$label" "($p passed, $f failed, QEMU status $QSTATUS)"
        [[ $f -eq 0 ]] || { grep -E '^FAIL' "$log" | sed 's/^/    /'; show_log_tail "$log"; }
    fi
}

test_kernel() { # el2 smp cpu [mem]
    local prev=("$EL2" "$SMP" "$CPU" "$MEM")
    EL2=$1 SMP=$2 CPU=$3 MEM=${4:-$MEM}
    local g=; [[ $GIC != 3 ]] && g=gicv$GIC
    local label="kernel[$GRANULE,el$((EL2 + 1)),smp$SMP,$CPU,$MEM${g:+,$g}${5:+,$5}]"
    local log="$LOGDIR/kernel-$GRANULE-el$((EL2 + 1))-smp$SMP-$CPU-$MEM${g:+-$g}${5:+-$5}.log"
    run_kernel_tests "$label" "$log"
    EL2=${prev[0]} SMP=${prev[1]} CPU=${prev[2]} MEM=${prev[3]}
}

test_script() { # file smp should_fail
    local file=$1 prev_smp=$SMP
    SMP=$2
    local name; name=$(basename "$file" .scn)
    local va=; [[ $VA_BITS != 48 ]] && va=-va$VA_BITS
    local tag=; [[ -n $APPEND || -n ${APPEND_TAG:-} ]] && tag=",${APPEND_TAG:-$APPEND}"
    [[ $BOARD != virt && $tag != *",$BOARD"* ]] && tag+=",$BOARD"
    local label="script[$GRANULE$va,$name,smp$SMP$tag]"
    local log="$LOGDIR/script-$GRANULE$va-$name-smp$SMP${APPEND_TAG:+-$APPEND_TAG}.log"
    EXTRA_QEMU=(-initrd "$file")
    # A script may ask for kernel bootargs on a line "# bootargs: ...".
    local extra_args prev_mem=$MEM script_mem
    extra_args=$(sed -n 's/^# bootargs: //p' "$file" | head -n 1)
    # ... and for more RAM on a line "# mem: SIZE" (a 1G THP needs 3G).
    script_mem=$(sed -n 's/^# mem: //p' "$file" | head -n 1)
    MEM=${script_mem:-$MEM}
    # shellcheck disable=SC2086  # bootargs are words
    TIMEOUT=${TIMEOUT_SCRIPT:-180} run_qemu_logged "$log" script $extra_args
    EXTRA_QEMU=()
    MEM=$prev_mem
    local s; s=$(summary_of "$log")
    if [[ $3 == 0 ]]; then
        if [[ $QSTATUS -eq 0 && -n $s && ${s#* } == 0 ]]; then
            record "${s% *}" 0 "$label" "(${s% *} passed)"
        else
            local p=0 f=1
            [[ -n $s ]] && { p=${s% *}; f=${s#* }; [[ $f -eq 0 ]] && f=1; }
            record "$p" "$f" "$label" "(${s:-no summary}, QEMU status $QSTATUS)"
            grep -E '^(FAIL|error)' "$log" | head -n 20 | sed 's/^/    /'
            show_log_tail "$log"
        fi
    else
        # Must fail: non-zero exit and a summary line that counts failures
        # (a crash or hang has no summary and does not count as the expected failure).
        if [[ $QSTATUS -ne 0 && -n $s && ${s#* } -gt 0 ]]; then
            record 1 0 "$label" "(failed as it must: ${s#* } failure(s) detected)"
        else
            record 0 1 "$label" "(expected a detected failure; got ${s:-no summary}, QEMU status $QSTATUS)"
            show_log_tail "$log"
        fi
    fi
    SMP=$prev_smp
}

test_extra() { # script
    local name; name=$(basename "$1" .sh)
    local log="$LOGDIR/extra-$GRANULE-$name.log" status=0
    PAGELAB_IMG=$IMG PAGELAB_ELF=$ELF PAGELAB_ROOT=$ROOT PAGELAB_GRANULE=$GRANULE PAGELAB_CPU=${cpus[0]:-cortex-a72} timeout -k 5 600 "$1" >"$log" 2>&1 || status=$?
    if [[ $status -eq 0 ]]; then
        record 1 0 "extra[$GRANULE,$name]" "($(grep -cE '^ *(PASS|OK) ' "$log" || true) checks)"
    else
        record 0 1 "extra[$GRANULE,$name]" "(exit status $status)"
        grep -E '^ *(FAIL|MISMATCH)' "$log" | head -n 20 | sed 's/^/    /'
        tail -n 20 "$log" | sed 's/^/    | /'
    fi
}

# The interactive console, typed at: lines go in through the UART's
# receiver (scripts come from the initrd, so this is the only test of it),
# replies and verdicts come back. LABEL names the run; the `info` reply must
# say the UART was chosen by WHY, and the last one that its receiver is RX:
# "interrupt" (with at least one interrupt per typed line) or "polled".
test_console_input() { # label why rx
    local log="$LOGDIR/console-$1.log" status=0 fifo="$LOGDIR/console-$1.in" fd qpid
    # The 7th "line" is a paste: 30 checks, a bad command and `info` at once
    # (a paste fills the FIFO while the handler drains it).
    local paste i
    paste=$(for ((i = 0; i < 30; i++)); do echo 'A check r+0x2000 0x5a'; done; echo nosuchcommand; printf info)
    local lines=(info 'spawn A' 'A mmap r 64K' 'A write r 0x5a' 'A check r 0x5a' 'A check r+0x1000 0x5a'
                 "$paste" halt)
    qemu_cmd console
    [[ $VERBOSE == 1 ]] && echo "+ ${QEMU[*]}" >&2
    rm -f "$fifo"; mkfifo "$fifo"
    exec {fd}<>"$fifo"
    : >"$log"
    timeout -k 5 120 "${QEMU[@]}" -serial stdio -monitor none <&"$fd" >"$log" 2>&1 &
    qpid=$!
    # One line per prompt, as a person types: the receive FIFO is empty
    # before each, so each needs a receive interrupt of its own.
    local n=0 line t c
    for line in "${lines[@]}"; do
        n=$((n + 1))
        for ((t = 0; t < 300; t++)); do
            c=$(grep -c 'pagelab> ' "$log" || true)
            ((c >= n)) && break
            kill -0 "$qpid" 2>/dev/null || break
            sleep 0.1
        done
        printf '%s\n' "$line" >&"$fd"
    done
    wait "$qpid" || status=$?
    exec {fd}>&-
    rm -f "$fifo"
    # Every line but halt arrived before the last `info` printed.
    local verdict rx rx_ok=0 typed=$((${#lines[@]} - 1))
    verdict=$(tr -d '\r' <"$log" | grep -E '^halting: [0-9]+ passed, [0-9]+ failed$' | tail -n1 || true)
    rx=$(tr -d '\r' <"$log" | grep '^uart rx ' | tail -n1 || true)
    case $3 in
        interrupt) [[ $rx =~ ^uart\ rx\ +interrupt.*:\ ([0-9]+)\ taken && ${BASH_REMATCH[1]} -ge $typed ]] && rx_ok=1 ;;
        polled) [[ $rx =~ ^uart\ rx\ +polled ]] && rx_ok=1 ;;
    esac
    if [[ $status -eq 0 && $verdict == "halting: 32 passed, 1 failed" && $rx_ok == 1 ]] &&
        grep -q "^uart .*; by $2)" "$log" && grep -q "^PASS line 6: A check r+0x1000 0x5a" "$log" &&
        grep -q "unknown command \`nosuchcommand\`" "$log"; then
        record 1 0 "console[$1]" "(typed lines answered, the bad one refused; ${rx#uart rx  })"
    else
        local want="receive polled"; [[ $3 == interrupt ]] && want="at least $typed receive interrupts"
        record 0 1 "console[$1]" "(QEMU status $status, '${verdict:-no halting line}', '${rx:-no uart rx line}'; wanted $want)"
        show_log_tail "$log"
    fi
}

# `sdcard DIR` for UART (pl011|mini): the files must be there and say what
# they should, and the kernel8.img must boot on the board's QEMU machine as
# the firmware would start it: with cmdline.txt's bootargs and a devicetree
# shaped like the firmware's (serial0 on GPIO 14/15, no stdout-path).
test_sdcard() { # uart
    local dir="$LOGDIR/sdcard-$BOARD-$1" why=
    rm -rf "$dir"
    # The command itself, as a user runs it (its own `set -e`).
    if ! "$ROOT/qemu-run.sh" --board "$BOARD" --uart "$1" sdcard "$dir" >"$LOGDIR/sdcard-$BOARD-$1.log" 2>&1; then
        why="./qemu-run.sh --board $BOARD --uart $1 sdcard failed"
    elif ! cmp -s "$dir/kernel8.img" "$IMG"; then
        why="kernel8.img is not the flat image"
    elif ! { grep -qx 'arm_64bit=1' "$dir/config.txt" && grep -qx 'enable_uart=1' "$dir/config.txt" &&
             grep -qx 'kernel=kernel8.img' "$dir/config.txt"; }; then
        why="config.txt lacks arm_64bit=1, enable_uart=1 or kernel=kernel8.img"
    elif grep -qx 'dtoverlay=disable-bt' "$dir/config.txt" && [[ $1 == mini ]]; then
        why="config.txt moves Bluetooth off the PL011 although the mini UART is wanted"
    elif ! grep -qx 'dtoverlay=disable-bt' "$dir/config.txt" && [[ $1 == pl011 ]]; then
        why="config.txt leaves the PL011 on Bluetooth"
    elif ! grep -q 'pagelab.mode=console' "$dir/cmdline.txt"; then
        why="cmdline.txt has no pagelab.mode=console"
    fi
    if [[ -n $why ]]; then
        record 0 1 "sdcard[$BOARD,$1]" "($why)"
        return 0
    fi
    record 1 0 "sdcard[$BOARD,$1]" "(kernel8.img, config.txt, cmdline.txt)"
    local rx=interrupt; [[ $1 == mini ]] && rx=polled
    # pagelab.mode comes from cmdline.txt alone.
    IMG=$dir/kernel8.img APPEND=$(cat "$dir/cmdline.txt") UART=$1 FW_DT=$1 MODE_FROM_APPEND=1 \
        test_console_input "$BOARD,sdcard-$1" "alias serial0" $rx
}

# In-kernel tests and a few scenario scripts on a Raspberry Pi machine; then
# the console on its mini UART, and the sdcard files.
test_board() { # board [kernel-only]
    local prev=$BOARD
    BOARD=$1
    echo "== board $BOARD ($GRANULE granule)"
    run_kernel_tests "kernel[$BOARD,$GRANULE]" "$LOGDIR/board-$BOARD-$GRANULE.log"
    local scn
    [[ ${2:-} == kernel-only ]] && { BOARD=$prev; return 0; }
    for scn in processes-basic cow-basic cow-selftests only-4K/memfd-shmem; do
        [[ -e tests/scripts/$scn.scn ]] && APPEND_TAG=$BOARD test_script "tests/scripts/$scn.scn" 4 0
    done
    test_console_input "$BOARD,pl011" stdout-path interrupt
    UART=mini
    test_console_input "$BOARD,mini-uart" pagelab.uart polled
    APPEND_TAG="$BOARD,mini-uart" test_script tests/scripts/processes-basic.scn 4 0
    UART=pl011
    # As on a real board: the sdcard files, the firmware-shaped devicetree,
    # no pagelab.uart.
    test_sdcard pl011
    test_sdcard mini
    BOARD=$prev
}

# Everything that runs on a kernel image, for the current $GRANULE.
test_granule() {
    echo "== granule $GRANULE: building the kernel ($PROFILE)"
    if ! build; then
        record 0 1 "build[$GRANULE]" "(the kernel does not build)"
        return 0
    fi
    echo "== granule $GRANULE: in-kernel tests"
    local el smp cpu cpus=(cortex-a72 cortex-a53 max)
    [[ $GRANULE == 16K ]] && cpus=(max)
    for el in 0 1; do
        for smp in 1 4; do
            test_kernel "$el" "$smp" "${cpus[0]}"
        done
    done
    for cpu in "${cpus[@]:1}"; do
        test_kernel 0 1 "$cpu"
        test_kernel 1 4 "$cpu"
    done
    # RAM sizes: 1.5G needs 2M blocks next to a 1G block; 128M has no 1G block; 3G spans 3 GiB.
    test_kernel 0 2 "${cpus[0]}" 1536M
    test_kernel 1 1 "${cpus[0]}" 128M
    test_kernel 0 4 "${cpus[0]}" 3G
    # GICv2 (QEMU's default for virt; the Raspberry Pi 4 has one too), on one
    # CPU (GICD_ITARGETSR reads as zero there) and on four.
    local prev_gic=$GIC
    GIC=2
    test_kernel 0 4 "${cpus[0]}"
    test_kernel 1 1 "${cpus[0]}"
    GIC=$prev_gic
    # The unoptimised build must behave the same.
    if [[ $PROFILE == release ]]; then
        PROFILE=debug; set_paths
        if build; then
            test_kernel 1 4 "${cpus[0]}" 1G debug-build
        else
            record 0 1 "build[$GRANULE,debug]" "(the debug build fails)"
        fi
        PROFILE=release; set_paths
    fi
    if [[ $GRANULE == 4K ]]; then
        test_console_input "virt,$GRANULE,pl011" stdout-path interrupt
        GIC=2 test_console_input "virt,$GRANULE,pl011,gicv2" stdout-path interrupt
    fi
    echo "== granule $GRANULE: scenario scripts"
    local f prev_cpu=$CPU
    CPU=${cpus[0]}
    for f in tests/scripts/*.scn "tests/scripts/only-$GRANULE"/*.scn; do
        [[ -e $f ]] || continue
        test_script "$f" 1 0
        test_script "$f" 4 0
    done
    # Hardware dirty state (TCR_EL1.HD, DBM; needs -cpu max): writable-clean
    # entries that the MMU dirties itself, and no write-protected entry may
    # keep DBM. Every script again in that mode.
    local prev_append=$APPEND
    CPU=max APPEND="pagelab.hw-dbm=1${APPEND:+ $APPEND}" APPEND_TAG=hw-dbm
    for f in tests/scripts/*.scn "tests/scripts/only-$GRANULE"/*.scn; do
        [[ -e $f ]] || continue
        test_script "$f" 4 0
    done
    CPU=${cpus[0]} APPEND=$prev_append APPEND_TAG=
    for f in tests/scripts/should-fail/*.scn; do
        [[ -e $f ]] || continue
        test_script "$f" 1 1
    done
    CPU=$prev_cpu
    echo "== granule $GRANULE: torture"
    test_torture
    local blog="$LOGDIR/bench-$GRANULE.log"
    if run_bench "$blog"; then
        record 1 0 "bench[$GRANULE]" "(every measurement present; not a performance check)"
    else
        record 0 1 "bench[$GRANULE]" "(measurements missing)"; tail -n 20 "$blog" | sed 's/^/    | /'
    fi
    if [[ -d tests/extra ]]; then
        echo "== granule $GRANULE: extra checks"
        for f in tests/extra/*.sh; do
            [[ -x $f ]] && test_extra "$f"
        done
    fi
}

cmd_test() {
    ensure_deps
    mkdir -p "$LOGDIR"
    local start=$SECONDS
    test_host
    local g
    # PAGELAB_TEST_GRANULES="4K" narrows a local run; CI runs all three.
    for g in ${PAGELAB_TEST_GRANULES:-4K 16K 64K}; do
        GRANULE=$g; set_paths
        test_granule
    done
    # 39-bit user address space (3-level user tables with 4K pages): the
    # in-kernel tests (AT cross-check included) and every 4K scenario script.
    if [[ " ${PAGELAB_TEST_GRANULES:-4K} " == *" 4K "* ]]; then
        GRANULE=4K VA_BITS=39; set_paths
        echo "== 4K granule, 39-bit user VA"
        if build; then
            test_kernel 0 1 cortex-a72 1G va39
            test_kernel 1 4 cortex-a72 1G va39
            local f
            for f in tests/scripts/*.scn tests/scripts/only-4K/*.scn; do
                [[ -e $f ]] && test_script "$f" 4 0
            done
        else
            record 0 1 "build[4K,va39]" "(the va39 kernel does not build)"
        fi
        VA_BITS=48; set_paths
    fi
    # The Raspberry Pi machines (4K granule): in-kernel tests and a few
    # scenario scripts. PAGELAB_TEST_BOARDS="" leaves them out.
    if [[ " ${PAGELAB_TEST_GRANULES:-4K} " == *" 4K "* ]]; then
        GRANULE=4K; set_paths
        if build; then
            local b
            for b in ${PAGELAB_TEST_BOARDS-raspi4b raspi3b}; do
                test_board "$b"
            done
        else
            record 0 1 "build[4K,boards]" "(the kernel does not build)"
        fi
    fi
    # The boards' Cortex-A53/A72 have the 64K granule too: the in-kernel tests.
    if [[ " ${PAGELAB_TEST_GRANULES:-4K 16K 64K} " == *" 64K "* ]]; then
        GRANULE=64K; set_paths
        if build; then
            local b
            for b in ${PAGELAB_TEST_BOARDS-raspi4b raspi3b}; do
                test_board "$b" kernel-only
            done
        else
            record 0 1 "build[64K,boards]" "(the kernel does not build)"
        fi
        GRANULE=4K; set_paths
    fi
    echo "== done in $((SECONDS - start)) s; logs in ${LOGDIR#"$ROOT"/}"
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 ]]
}

# sdcard DIR: the files pagelab adds to a Raspberry Pi boot partition. The
# firmware itself (and the board's own DTB, which the firmware hands over)
# comes from the Raspberry Pi firmware repository; see docs/BRINGUP.md.
cmd_sdcard() {
    [[ $BOARD == raspi4b || $BOARD == raspi3b ]] || die "sdcard needs --board raspi4b or --board raspi3b"
    ensure_deps
    build
    mkdir -p "$SDDIR"
    # The flat image is an arm64 Linux Image (header included), which the
    # firmware loads like a Linux kernel8.img.
    cp "$IMG" "$SDDIR/kernel8.img"
    # The firmware's devicetree calls the UART on GPIO 14/15 serial0, and
    # the kernel takes serial0 when there is no stdout-path: no bootarg is
    # needed for either choice.
    local uart_cfg
    if [[ $UART == mini ]]; then
        uart_cfg="# The mini UART (UART1) drives GPIO14/15, the firmware's default; the PL011
# stays on Bluetooth. enable_uart=1 also fixes the core clock its baud rate
# comes from."
    else
        uart_cfg="# The PL011 (UART0) drives GPIO14/15 only with Bluetooth moved off it
# (./qemu-run.sh --uart mini sdcard DIR keeps Bluetooth and uses the mini UART).
dtoverlay=disable-bt"
    fi
    cat > "$SDDIR/config.txt" <<CFG
# pagelab on a Raspberry Pi ${BOARD#raspi} (written by ./qemu-run.sh sdcard).
arm_64bit=1
kernel=kernel8.img
enable_uart=1
$uart_cfg
# Firmware messages on the UART too (Pi 4 bootloader): uart_2ndstage=1
CFG
    cat > "$SDDIR/cmdline.txt" <<CMD
pagelab.mode=console loglevel=info
CMD
    say "wrote $SDDIR/kernel8.img, config.txt and cmdline.txt (add the firmware files: docs/BRINGUP.md)"
}

# ---------------------------------------------------------------- torture

# One torture boot. $1 log, $2 1 = stream the log (without the op list) to
# the terminal, rest: bootargs. The initrd, if any, is in EXTRA_QEMU. Sets
# QSTATUS to QEMU's own exit status (124: timed out).
torture_qemu() {
    local log=$1 show=$2; shift 2
    qemu_cmd torture "$@"
    [[ $VERBOSE == 1 ]] && echo "+ ${QEMU[*]}" >&2
    local t=${TIMEOUT:-$((120 + T_OPS / 50))}
    QSTATUS=0
    if [[ $show == 1 ]]; then
        set +e
        timeout -k 5 "$t" "${QEMU[@]}" -serial stdio -monitor none "${EXTRA_QEMU[@]}" </dev/null 2>&1 |
            tee "$log" | grep --line-buffered -v '^torture-op: '
        QSTATUS=${PIPESTATUS[0]}
        set -e
    else
        timeout -k 5 "$t" "${QEMU[@]}" -serial stdio -monitor none "${EXTRA_QEMU[@]}" </dev/null >"$log" 2>&1 ||
            QSTATUS=$?
    fi
    if [[ $QSTATUS -eq 124 ]]; then say "torture: timed out after $t s"; fi
}

# M of the log's last line when that is the torture summary; nothing when the
# run ended any other way (a panic, a hang).
torture_divergences() { # log
    local last
    last=$(tr -d '\r' <"$1" | grep -v '^$' | tail -n 1 || true)
    if [[ $last =~ ^torture:\ [0-9]+\ ops,\ ([0-9]+)\ divergences,\ [0-9]+\ injected\ failures$ ]]; then
        echo "${BASH_REMATCH[1]}"
    fi
}

torture_fail_args() {
    [[ -n $T_FAIL ]] && echo "pagelab.fail-alloc=$T_FAIL,$T_SEED"
    true
}

# Whether replaying the op lines of $1 still goes wrong (a divergence, a
# crash or a hang: anything but a clean pass).
torture_still_fails() { # opsfile
    local log="$1.log" m n
    n=$(wc -l <"$1")
    EXTRA_QEMU=(-initrd "$1")
    # shellcheck disable=SC2046  # bootargs are words
    TIMEOUT=${TIMEOUT:-$((60 + n / 50))} torture_qemu "$log" 0 pagelab.torture=replay $(torture_fail_args)
    EXTRA_QEMU=()
    m=$(torture_divergences "$log")
    [[ $QSTATUS -ne 0 || $m != 0 ]]
}

# Delta debugging (ddmin, complements only) of the op list in $1, in place:
# drops chunks of ops as long as the replay still goes wrong.
torture_shrink() { # opsfile
    local ops try n=2 len chunk i reduced tmp="$1.try"
    mapfile -t ops <"$1"
    while ((${#ops[@]} >= 2)); do
        len=${#ops[@]}
        chunk=$(((len + n - 1) / n))
        reduced=0
        for ((i = 0; i < len; i += chunk)); do
            try=("${ops[@]:0:i}" "${ops[@]:i+chunk}")
            printf '%s\n' "${try[@]}" >"$tmp"
            if torture_still_fails "$tmp"; then
                ops=("${try[@]}")
                n=$((n > 2 ? n - 1 : 2))
                reduced=1
                break
            fi
        done
        if ((reduced == 0)); then
            ((n >= len)) && break
            n=$((n * 2 > len ? len : n * 2))
        fi
        say "torture: shrinking: ${#ops[@]} ops left"
    done
    printf '%s\n' "${ops[@]}" >"$1"
}

# The torture test for the current $GRANULE, as ./qemu-run.sh test runs it:
# 20,000 ops at --smp 1, and at --smp 4 with 2,000 ppm of allocations failing.
test_torture() {
    local smp label log m prev=("$SMP" "$CPU" "$T_OPS" "$T_SEED" "$T_FAIL")
    [[ $GRANULE == 16K ]] && CPU=max
    T_OPS=20000
    for smp in 1 4; do
        SMP=$smp T_SEED=$((smp * 1000 + ${GRANULE%K})) T_FAIL=
        [[ $smp == 4 ]] && T_FAIL=2000
        label="torture[$GRANULE,smp$smp${T_FAIL:+,fail-alloc=$T_FAIL}]"
        log="$LOGDIR/torture-$GRANULE-smp$smp.log"
        # shellcheck disable=SC2046  # bootargs are words
        torture_qemu "$log" 0 "pagelab.torture=$T_SEED,$T_OPS" $(torture_fail_args)
        m=$(torture_divergences "$log")
        if [[ $QSTATUS -eq 0 && $m == 0 ]]; then
            record 1 0 "$label" "($(tr -d '\r' <"$log" | tail -n 1))"
        else
            record 0 1 "$label" "(${m:-no summary:} divergence(s), QEMU status $QSTATUS; again by hand:" \
                "./qemu-run.sh torture --seed $T_SEED --smp $smp --granule $GRANULE${T_FAIL:+ --fail-alloc $T_FAIL})"
            grep -v '^torture-op: ' "$log" | tail -n 12 | sed 's/^/    | /'
        fi
    done
    SMP=${prev[0]} CPU=${prev[1]} T_OPS=${prev[2]} T_SEED=${prev[3]} T_FAIL=${prev[4]}
}

cmd_torture() {
    ensure_deps
    build
    [[ -n $T_SEED ]] || T_SEED=$(( $(date +%s) % 1000000 ))
    local run="$TDIR/torture-seed$T_SEED-smp$SMP${T_FAIL:+-fail$T_FAIL}"
    local log="$run.log" ops="$run.ops" m
    local fail_args; fail_args=$(torture_fail_args)
    if [[ -n $T_REPLAY ]]; then
        [[ -f $T_REPLAY && -r $T_REPLAY ]] || die "cannot read op list '$T_REPLAY'"
        cp "$T_REPLAY" "$ops"
        T_OPS=$(wc -l <"$ops")
        EXTRA_QEMU=(-initrd "$ops")
        # shellcheck disable=SC2086  # bootargs are words
        torture_qemu "$log" 1 pagelab.torture=replay $fail_args
        EXTRA_QEMU=()
    else
        say "torture: seed $T_SEED, $T_OPS ops, $SMP CPU(s), granule $GRANULE${T_FAIL:+, $T_FAIL ppm of allocations fail}"
        # shellcheck disable=SC2086  # bootargs are words
        torture_qemu "$log" 1 "pagelab.torture=$T_SEED,$T_OPS" $fail_args
    fi
    m=$(torture_divergences "$log")
    if [[ $QSTATUS -eq 0 && $m == 0 ]]; then
        exit 0
    fi
    [[ -n $m ]] || say "torture: the run did not end with its summary line (QEMU status $QSTATUS)"
    symbolize "$log" || true
    sed -n 's/^torture-op: //p' "$log" >"$ops"
    if [[ $T_SHRINK == 1 && -s $ops ]]; then
        say "torture: shrinking $(wc -l <"$ops") ops by delta debugging (replay runs; --no-shrink skips this)"
        torture_shrink "$ops"
        local script="$run-repro.scn" rlog="$run-repro.log"
        EXTRA_QEMU=(-initrd "$ops")
        # shellcheck disable=SC2086  # bootargs are words
        torture_qemu "$rlog" 0 pagelab.torture=replay pagelab.torture-script=1 $fail_args
        EXTRA_QEMU=()
        sed -n 's/^script: //p' "$rlog" >"$script"
        say "torture: $(wc -l <"$ops") ops still diverge: $ops (./qemu-run.sh torture --replay FILE)"
        say "torture: as a scenario script ($script), for ./qemu-run.sh --script FILE --smp $SMP --granule $GRANULE:"
        cat "$script"
        grep -E '^torture: DIVERGENCE' "$rlog" || true
    fi
    exit 1
}

case $COMMAND in
    torture) cmd_torture ;;
    sdcard) cmd_sdcard ;;
    console) cmd_console ;;
    script) cmd_script ;;
    build) ensure_deps; build; say "built $ELF and $IMG" ;;
    gdb) cmd_gdb ;;
    bench) cmd_bench ;;
    test) cmd_test ;;
esac
