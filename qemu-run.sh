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
SWAP=64M
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
  test              run every test: host unit tests, the harness self-test,
                    style gates (cargo fmt --check, clippy -D warnings, asm! and
                    aarch64_cpu only under kernel/src/arch/), in-kernel
                    tests under QEMU (EL1/EL2 entry, 1 and 4 CPUs,
                    cortex-a53/a72/max), scenario and should-fail scripts, the
                    extra checks in tests/extra/, and the in-kernel tests and four
                    scripts on raspi4b and raspi3b, then a check that no in-kernel
                    test only ever skipped. QEMU runs go PAGELAB_TEST_JOBS (default
                    2) at a time. Ends with "N passed, M failed"; exit status is
                    non-zero on any failure. A run passes only when QEMU exits 0
                    and its last line is the final "N passed, 0 failed".
                    PAGELAB_TEST_GRANULES="4K" and PAGELAB_TEST_BOARDS="" narrow it.
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
                    the interactive console; exit status 0 only if QEMU exits 0
                    and the last line is the final "N passed, 0 failed". Lines
                    "# bootargs: ARGS" and "# mem: SIZE" in FILE add bootargs and
                    set --mem (unless given), as in `test`
  --el2             enter the kernel at EL2 (-M virt,virtualization=on)
  --smp N           number of CPUs (default 1, at most 8)
  --cpu NAME        cortex-a53 | cortex-a72 | max (default cortex-a72)
  --mem SIZE        RAM size, e.g. 512M, 1G, 4G (default 1G): what the kernel manages
  --swap SIZE       RAM-backed swap device, e.g. 0, 64M, 256M (default 64M): on virt
                    QEMU gets --mem plus SIZE of RAM and the kernel takes its swap
                    pool from the top (pagelab.swap=SIZE); on the Raspberry Pi boards
                    (fixed RAM) the pool comes out of their RAM. 0: no swap.
                    "# swap: SIZE" in a script sets it (unless given), as "# mem:"
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
  --append "ARGS"   extra kernel bootargs, e.g. "loglevel=debug"; with no command,
                    a pagelab.mode=M there replaces the console mode
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
# mib SIZE: a size like 64M or 2G (or 0) in MiB.
mib() { case $1 in 0) echo 0 ;; *G) echo $(( ${1%G} * 1024 )) ;; *M) echo "${1%M}" ;; esac; }
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
        --swap) [[ $# -ge 2 && $2 =~ ^(0|[0-9]+[MG])$ ]] || die "--swap needs a size like 0, 64M or 1G"; SWAP=$2; SWAP_GIVEN=1; shift ;;
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
    # llvm-tools for objcopy; rustfmt and clippy for the style gates of `test`.
    local c components
    components=$(rustup +"$chan" component list --installed)
    for c in llvm-tools rustfmt clippy; do
        grep -q "^$c" <<<"$components" || { say "adding Rust component $c"; rustup +"$chan" component add "$c" >/dev/null; }
    done
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
        # MODE_FROM_APPEND: pagelab.mode comes from $APPEND alone.
        local args="pagelab.exit=semihosting"
        [[ -z ${MODE_FROM_APPEND:-} ]] && args+=" pagelab.mode=$mode"
        args+=" pagelab.expect-el=2 pagelab.swap=$SWAP $*"
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
    local args="pagelab.exit=semihosting"
    [[ -z ${MODE_FROM_APPEND:-} ]] && args+=" pagelab.mode=$mode"
    args+=" pagelab.expect-el=$((EL2 + 1)) pagelab.swap=$SWAP $*"
    [[ -n $APPEND ]] && args+=" $APPEND"
    # The swap pool comes on top of --mem: the kernel takes it from the top.
    local ram
    ram=$(( $(mib "$MEM") + $(mib "$SWAP") ))M
    # shellcheck disable=SC2054  # commas are inside QEMU option values
    QEMU=(qemu-system-aarch64 -M "$machine" -cpu "$CPU" -smp "$SMP" -m "$ram"
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

# The pass rule. A run passes only when QEMU exits 0 and the last non-empty
# line of its output is the final "N passed, 0 failed": a summary followed by
# a panic, a backtrace or anything else is a failure, and so is a run that
# printed only an intermediate summary (`selftest NAME` prints one) before it
# crashed or hung.

# Sets SUM_P and SUM_F from LOG's last non-empty line when that line is
# "N passed, M failed"; empties both otherwise. Never fails (under set -e a
# log without a summary must not end the caller).
final_summary() { # log
    local last
    last=$(last_line "$1")
    if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        SUM_P=${BASH_REMATCH[1]} SUM_F=${BASH_REMATCH[2]}
    else
        SUM_P= SUM_F=
    fi
}

# The last non-empty line of a log, without the UART's carriage returns.
last_line() { { tr -d '\r' <"$1" | grep -v '^[[:space:]]*$' | tail -n 1; } 2>/dev/null || true; }

# Why a run did not pass, from QEMU's status (timeout's 124 and, after -k,
# 137 mean it was killed) and the final summary; empty when it passed.
# Call final_summary first.
why_failed() { # status timeout log
    if [[ $1 -eq 124 || $1 -eq 137 ]]; then
        echo "timed out after $2 s"
    elif [[ -z $SUM_P ]]; then
        local last; last=$(last_line "$3")
        if [[ -z $last ]]; then
            echo "no output (QEMU exited $1)"
        else
            echo "no final summary (QEMU exited $1; last line: '${last:0:60}')"
        fi
    elif [[ $1 -ne 0 || $SUM_F -ne 0 ]]; then
        echo "$SUM_P passed, $SUM_F failed, QEMU exited $1"
    fi
}

EXTRA_QEMU=()

cmd_console() {
    ensure_deps
    build
    # The kernel takes the first pagelab.mode: --append's must replace ours.
    local from_append=
    [[ " $APPEND" == *" pagelab.mode="* ]] && from_append=1
    MODE_FROM_APPEND=$from_append qemu_cmd console
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
    # As in `test`: a line "# mem: SIZE" sets the RAM size unless --mem did.
    local script_mem
    script_mem=$(sed -n 's/^# mem: //p' "$SCRIPT" | head -n 1 || true)
    [[ -n $script_mem && $FIXED_OPTS != *--mem* ]] && MEM=$script_mem
    # ... and "# swap: SIZE" the swap device unless --swap did.
    local script_swap
    script_swap=$(sed -n 's/^# swap: //p' "$SCRIPT" | head -n 1 || true)
    [[ -n $script_swap && -z ${SWAP_GIVEN:-} ]] && SWAP=$script_swap
    # shellcheck disable=SC2046  # bootargs are words
    qemu_cmd script $(sed -n 's/^# bootargs: //p' "$SCRIPT" | head -n 1)
    QEMU+=(-initrd "$SCRIPT")
    if [[ $GDB == 1 ]]; then
        say "QEMU is waiting for GDB on tcp::1234 (./qemu-run.sh gdb)"
        QEMU+=(-s -S)
    fi
    local log why
    TMPLOG=$(mktemp); log=$TMPLOG
    trap 'rm -f "$TMPLOG"' EXIT
    [[ $VERBOSE == 1 ]] && echo "+ ${QEMU[*]}" >&2
    # The output streams to the terminal and to the log; QEMU's own status
    # is the pipeline's first (set +e: a failing QEMU must not end us here).
    set +e
    timeout -k 5 "${TIMEOUT:-300}" "${QEMU[@]}" -serial stdio -monitor none </dev/null 2>&1 | tee "$log"
    QSTATUS=${PIPESTATUS[0]}
    set -e
    final_summary "$log"
    why=$(why_failed "$QSTATUS" "${TIMEOUT:-300}" "$log")
    [[ -z $why ]] && exit 0
    say "failed: $why"
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
             munmap_populated swap_out swap_in_fault)

# Runs the benchmarks once; $1 = log. Returns non-zero if anything is missing.
run_bench() {
    local log=$1 status=0
    # shellcheck disable=SC2054  # commas are inside QEMU option values
    local q=(qemu-system-aarch64 -M virt -cpu max -smp 1 -m $((1024 + $(mib "$SWAP")))M -icount shift=0,sleep=off -seed 1
             -nodefaults -no-user-config -display none -no-reboot -semihosting-config enable=on,target=native
             -kernel "$IMG" -append "pagelab.exit=semihosting pagelab.mode=bench pagelab.swap=$SWAP $APPEND" -serial stdio -monitor none)
    [[ $VERBOSE == 1 ]] && echo "+ ${q[*]}" >&2
    timeout -k 5 "${TIMEOUT:-600}" "${q[@]}" </dev/null >"$log" 2>&1 || status=$?
    local n missing=0
    local names=("${BENCH_NAMES[@]}")
    # 2M blocks (PMD THP) exist with the 4K granule only.
    [[ $GRANULE == 4K ]] && names+=(thp_write_fault_2M thp_read_fault_2M)
    for n in "${names[@]}"; do
        grep -qE "^bench: $n [^ ]+ [0-9]+" "$log" || { echo "missing measurement: $n" >&2; missing=1; }
    done
    # As for tests: QEMU exits 0 and the final line is the clean end.
    local last; last=$(last_line "$log")
    [[ $status -eq 124 || $status -eq 137 ]] && echo "timed out after ${TIMEOUT:-600} s" >&2
    [[ $last == "bench done: 0 problem(s)" ]] || { echo "the last line is '$last', not 'bench done: 0 problem(s)'" >&2; missing=1; }
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

# Counts a result and prints its line. Inside a job the counts go to the
# job's results file, and the parent adds them up (see the job pool).
record() { # passed failed label detail
    if [[ -n ${JOB_RESULTS:-} ]]; then
        echo "$1 $2" >>"$JOB_RESULTS"
    else
        PASSED=$((PASSED + $1)); FAILED=$((FAILED + $2))
    fi
    if [[ $2 -eq 0 ]]; then printf 'PASS %-44s %s\n' "$3" "$4"; else printf 'FAIL %-44s %s\n' "$3" "$4"; fi
}

show_log_tail() { { tail -n 30 "$1" | sed 's/^/    | /'; symbolize "$1" | sed 's/^/    /'; } || true; }

# The failing lines of a run, indented (none is fine).
show_failures() { # log pattern
    { tr -d '\r' <"$1" | grep -E "$2" | head -n 20 | sed 's/^/    /'; } || true
}

# ---------------------------------------------------------------- job pool
# `test` runs its QEMU runs PAGELAB_TEST_JOBS (default 2) at a time. A job is
# a subshell with its own output file, results file (record's counts) and
# status file; the parent prints the jobs' output and adds up their counts
# in the order the jobs were started, so the output does not depend on
# timing. A job that ends with a non-zero status (a harness error under
# set -e) or with no status at all (killed) is a FAIL of its own. The parent
# prints and records directly only when no job is outstanding (after
# `jobs_show all`); in between, `note` puts a line in the order.

JOB_RESULTS=

jobs_init() { # dir
    JOBDIR=$1
    rm -rf "$JOBDIR"; mkdir -p "$JOBDIR"
    JOB_NEXT=0 JOB_SHOWN=0 JOB_PIDS=() JOB_NAMES=()
}

job() { # function args...
    while (($(jobs -rp | wc -l) >= ${PAGELAB_TEST_JOBS:-2})); do
        wait -n 2>/dev/null || true
        jobs_show
    done
    local n=$JOB_NEXT
    JOB_NEXT=$((n + 1))
    JOB_NAMES[n]="$*"
    (
        JOB_RESULTS=$JOBDIR/$n.res
        : >"$JOB_RESULTS"
        # The status is written last, and renamed into place whole.
        trap 'echo $? >"$JOBDIR/$n.st" && mv "$JOBDIR/$n.st" "$JOBDIR/$n.rc"' EXIT
        "$@" >"$JOBDIR/$n.out" 2>&1
    ) &
    JOB_PIDS[n]=$!
    jobs_show
}

note() { # line: printed in job order
    local n=$JOB_NEXT
    JOB_NEXT=$((n + 1))
    JOB_NAMES[n]=note
    printf '%s\n' "$*" >"$JOBDIR/$n.out"
    : >"$JOBDIR/$n.res"
    echo 0 >"$JOBDIR/$n.rc"
    jobs_show
}

# Prints and counts the finished jobs in order, stopping at the first one
# still running; with "all", waits for every job.
jobs_show() { # [all]
    local n rc p f
    while ((JOB_SHOWN < JOB_NEXT)); do
        n=$JOB_SHOWN
        if [[ ! -e $JOBDIR/$n.rc ]]; then
            [[ ${1:-} == all ]] || return 0
            if [[ -n ${JOB_PIDS[n]:-} ]]; then wait "${JOB_PIDS[n]}" 2>/dev/null || true; fi
        fi
        cat "$JOBDIR/$n.out" 2>/dev/null || true
        if [[ -f $JOBDIR/$n.res ]]; then
            while read -r p f; do PASSED=$((PASSED + p)); FAILED=$((FAILED + f)); done <"$JOBDIR/$n.res"
        fi
        rc=$(cat "$JOBDIR/$n.rc" 2>/dev/null || echo "none (killed)")
        JOB_SHOWN=$((n + 1))
        [[ $rc == 0 ]] || record 0 1 "job[$n]" "(${JOB_NAMES[n]}: ended with status $rc, a harness error)"
    done
}

# ---------------------------------------------------------------- test steps

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

# The harness's own test (tests/harness/self-test.sh): broken runs of a fake
# QEMU must be reported as failures by every path above.
test_harness() {
    echo "== harness self-test (a fake qemu-system-aarch64)"
    local log="$LOGDIR/harness-self-test.log" status=0 s
    # (Its `--script` runs build the 4K kernel: in a fresh clone, the first build.)
    timeout -k 5 1800 tests/harness/self-test.sh >"$log" 2>&1 || status=$?
    s=$(last_line "$log")
    if [[ $status -eq 0 ]]; then
        record 1 0 "harness: self-test" "(${s#harness self-test: })"
    else
        record 0 1 "harness: self-test" "(exit status $status: ${s#harness self-test: })"
        show_failures "$log" '^FAIL '
    fi
}

# Style gates: rustfmt, and clippy with -D warnings on the host and for the
# kernel target in every build configuration.
test_gates() {
    echo "== style gates (cargo fmt, cargo clippy -D warnings)"
    gate "fmt" cargo fmt --all --check
    check_asm_in_arch
    gate "clippy[host]" cargo clippy --workspace --all-targets -- -D warnings
    local f
    # One target directory for the four: the dependencies are checked once.
    for f in granule-4k granule-16k granule-64k granule-4k,va39; do
        gate "clippy[kernel,$f]" cargo clippy -q -p pagelab-kernel --target "$TARGET" --release \
            --no-default-features --features "$f" --target-dir "$ROOT/target/clippy" -- -D warnings
    done
}

# arch/ is the bottom layer: inline and global assembly, and the system
# registers (the aarch64-cpu crate), live only under kernel/src/arch/
# (docs/ARCHITECTURE.md). Comment lines do not count.
check_asm_in_arch() { # [src dir, default kernel/src]
    local src=${1:-$ROOT/kernel/src} hits files
    hits=$({ grep -rnE --include='*.rs' '(^|[^A-Za-z0-9_])(asm!\(|global_asm!|naked_asm!|aarch64_cpu::)' "$src" \
        | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' | grep -v "^$src/arch/"; } || true)
    if [[ -z $hits ]]; then
        record 1 0 "gate: asm and sysregs only in arch/" ""
    else
        files=$(printf '%s\n' "$hits" | cut -d: -f1 | sed "s|^$src/||" | sort -u | paste -sd' ')
        record 0 1 "gate: asm and sysregs only in arch/" "(asm!/global_asm!/naked_asm!/aarch64_cpu:: outside kernel/src/arch/: $files)"
        printf '%s\n' "$hits" | sed "s|^$src/||; s/^/    | /"
    fi
}

gate() { # label command...
    local label=$1; shift
    local log="$LOGDIR/gate-${label//[^a-z0-9-]/_}.log" status=0
    "$@" >"$log" 2>&1 || status=$?
    if [[ $status -eq 0 ]]; then
        record 1 0 "gate: $label" ""
    else
        record 0 1 "gate: $label" "(exit status $status: $*)"
        { head -n 30 "$log" | sed 's/^/    | /'; } || true
    fi
}

# Boots the in-kernel tests (pagelab.mode=test) with the current settings,
# logging to LOG, and records the result as LABEL. The log joins the list
# the SKIP coverage check reads.
run_kernel_tests() { # label log
    local label=$1 log=$2 p f why t=${TIMEOUT_KERNEL:-180}
    TIMEOUT=$t run_qemu_logged "$log" test
    final_summary "$log"
    why=$(why_failed "$QSTATUS" "$t" "$log")
    local skipped; skipped=$(tr -d '\r' <"$log" | grep -c '^SKIP ' || true)
    # Every test the kernel announced has its verdict line, and invariants one more.
    local announced verdicts
    announced=$({ tr -d '\r' <"$log" | sed -n 's/^running \([0-9]*\) in-kernel tests$/\1/p' | head -n 1; } || true)
    verdicts=$(tr -d '\r' <"$log" | grep -cE '^(PASS [A-Za-z0-9_]+|SKIP [A-Za-z0-9_]+: .*|FAIL [A-Za-z0-9_]+: .*)$' || true)
    if [[ -z $why && ( -z $announced || $verdicts -ne $((announced + 1)) ) ]]; then
        why="$verdicts verdict lines for ${announced:-an unannounced number of} tests and invariants"
    fi
    # qemu_cmd passes pagelab.expect-el on every boot: the entry-EL test must really run.
    if [[ -z $why ]] && tr -d '\r' <"$log" | grep -q '^SKIP boot_entry_el_matches_request:'; then
        why="boot_entry_el_matches_request skipped: the boot had no pagelab.expect-el"
    fi
    if [[ -z $why ]]; then
        # Only a sound run's PASS lines count for the SKIP coverage check.
        echo "$log" >>"$LOGDIR/in-kernel-logs"
        record "$SUM_P" 0 "$label" "($SUM_P passed, $skipped skipped)"
    else
        p=${SUM_P:-$(tr -d '\r' <"$log" | grep -c '^PASS ' || true)}
        f=${SUM_F:-0}
        ((f > 0)) || f=1
        record "$p" "$f" "$label" "($why)"
        show_failures "$log" '^FAIL'
        show_log_tail "$log"
    fi
}

test_kernel() { # el2 smp cpu [mem [tag]]
    local prev=("$EL2" "$SMP" "$CPU" "$MEM")
    EL2=$1 SMP=$2 CPU=$3 MEM=${4:-$MEM}
    local g=; [[ $GIC != 3 ]] && g=gicv$GIC
    local label="kernel[$GRANULE,el$((EL2 + 1)),smp$SMP,$CPU,$MEM${g:+,$g}${5:+,$5}]"
    local log="$LOGDIR/kernel-$GRANULE-el$((EL2 + 1))-smp$SMP-$CPU-$MEM${g:+-$g}${5:+-$5}.log"
    run_kernel_tests "$label" "$log"
    EL2=${prev[0]} SMP=${prev[1]} CPU=${prev[2]} MEM=${prev[3]}
}

# The line numbers of a script run's failures ("FAIL line N", "error: line
# N", and "end" for the closing invariants), sorted, one line.
failing_lines() { # log
    { tr -d '\r' <"$1" | sed -nE 's/^(FAIL|error:) line ([0-9]+):.*/\2/p; s/^FAIL end:.*/end/p' |
        sort -uV | paste -sd' '; } || true
}

# A should-fail script's declared failures: its first line is
# "# expect-fail: N N ...", line numbers (and "end" for the closing
# invariants). Prints them sorted, or nothing when the line is missing or bad.
expected_failures() { # file
    local decl w out=()
    decl=$(head -n 1 "$1" | sed -n 's/^# expect-fail://p')
    for w in $decl; do
        [[ $w =~ ^([1-9][0-9]*|end)$ ]] || return 0
        out+=("$w")
    done
    [[ ${#out[@]} -gt 0 ]] || return 0
    printf '%s\n' "${out[@]}" | sort -uV | paste -sd' '
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
    local extra_args prev_mem=$MEM prev_swap=$SWAP script_mem script_swap t=${TIMEOUT_SCRIPT:-180}
    extra_args=$(sed -n 's/^# bootargs: //p' "$file" | head -n 1 || true)
    # ... and for more RAM on a line "# mem: SIZE" (a 1G THP needs 3G).
    script_mem=$(sed -n 's/^# mem: //p' "$file" | head -n 1 || true)
    MEM=${script_mem:-$MEM}
    # ... and "# swap: SIZE" for another swap device.
    script_swap=$(sed -n 's/^# swap: //p' "$file" | head -n 1 || true)
    SWAP=${script_swap:-$SWAP}
    # shellcheck disable=SC2086  # bootargs are words
    TIMEOUT=$t run_qemu_logged "$log" script $extra_args
    EXTRA_QEMU=()
    MEM=$prev_mem SWAP=$prev_swap
    final_summary "$log"
    local why; why=$(why_failed "$QSTATUS" "$t" "$log")
    if [[ $3 == 0 ]]; then
        if [[ -z $why ]]; then
            record "$SUM_P" 0 "$label" "($SUM_P passed)"
        else
            local p=${SUM_P:-0} f=${SUM_F:-0}
            ((f > 0)) || f=1
            record "$p" "$f" "$label" "($why)"
            show_failures "$log" '^(FAIL|error)'
            show_log_tail "$log"
        fi
    else
        # Must fail exactly at the declared lines, and otherwise end as a
        # sound run does: QEMU exits 1 (failures counted; a panic is 101, a
        # timeout 124) and the final summary is the last line.
        local want got
        want=$(expected_failures "$file")
        got=$(failing_lines "$log")
        if [[ -z $want ]]; then
            record 0 1 "$label" "(no '# expect-fail: N ...' first line)"
        elif [[ $QSTATUS -eq 1 && -n $SUM_P && $SUM_F -eq $(wc -w <<<"$want") && $got == "$want" ]]; then
            record 1 0 "$label" "(failed as declared: lines $want)"
        else
            # (why is empty only for a run that passed outright.)
            record 0 1 "$label" "(declared failing lines '$want', got '$got'; ${why:-$SUM_P passed, 0 failed, QEMU exited 0})"
            show_failures "$log" '^(FAIL|error)'
            show_log_tail "$log"
        fi
    fi
    SMP=$prev_smp
}

# The hardware-DBM SMP test (dbm_smp_writers_vs_mprotect_fork) in the one
# configuration it applies to: --smp 4 --cpu max with pagelab.hw-dbm=1
# pagelab.hw-af=1 (the script's bootargs line). The in-kernel runs skip it
# (no hw-dbm), so a sound run's PASS line joins the SKIP coverage check.
test_dbm_smp() {
    local prev_cpu=$CPU va=
    [[ $VA_BITS != 48 ]] && va=-va$VA_BITS
    CPU=max
    test_script tests/scripts/smp4-hw-dbm/dbm-smp-writers.scn 4 0
    CPU=$prev_cpu
    if [[ ${SUM_F:-1} == 0 && -n ${SUM_P:-} ]]; then
        echo "$LOGDIR/script-$GRANULE$va-dbm-smp-writers-smp4.log" >>"$LOGDIR/in-kernel-logs"
    fi
}

test_extra() { # script
    local name; name=$(basename "$1" .sh)
    local log="$LOGDIR/extra-$GRANULE-$name.log" status=0
    PAGELAB_IMG=$IMG PAGELAB_ELF=$ELF PAGELAB_ROOT=$ROOT PAGELAB_GRANULE=$GRANULE PAGELAB_CPU=${cpus[0]:-cortex-a72} timeout -k 5 600 "$1" >"$log" 2>&1 || status=$?
    if [[ $status -eq 0 ]]; then
        record 1 0 "extra[$GRANULE,$name]" "($(grep -cE '^ *(PASS|OK) ' "$log" || true) checks)"
    else
        record 0 1 "extra[$GRANULE,$name]" "(exit status $status)"
        show_failures "$log" '^ *(FAIL|MISMATCH)'
        { tail -n 20 "$log" | sed 's/^/    | /'; } || true
    fi
}

test_bench() { # log
    if run_bench "$1" 2>"$1.why"; then
        record 1 0 "bench[$GRANULE]" "(every measurement present; not a performance check)"
    else
        record 0 1 "bench[$GRANULE]" "($(head -n 1 "$1.why" || true))"
        { sed 's/^/    /' "$1.why"; tail -n 20 "$1" | sed 's/^/    | /'; } || true
    fi
}

# No test passes by not running: every in-kernel test that said "SKIP name:
# why" (it cannot apply in that configuration) in some run of this `test`
# must PASS in another.
check_skip_coverage() {
    local list=$LOGDIR/in-kernel-logs
    if [[ ! -s $list ]]; then
        record 0 1 "coverage: skipped in-kernel tests" "(no in-kernel test run to read)"
        return 0
    fi
    local logs=() skipped passed only
    mapfile -t logs <"$list"
    skipped=$({ cat "${logs[@]}" 2>/dev/null | tr -d '\r' | sed -n 's/^SKIP \([A-Za-z0-9_]*\): .*/\1/p' | sort -u; } || true)
    passed=$({ cat "${logs[@]}" 2>/dev/null | tr -d '\r' | sed -n 's/^PASS \([A-Za-z0-9_]*\)$/\1/p' | sort -u; } || true)
    only=$(comm -23 <(printf '%s\n' "$skipped" | grep -v '^$' || true) <(printf '%s\n' "$passed") | paste -sd' ' || true)
    local n; n=$(printf '%s\n' "$skipped" | grep -c . || true)
    if [[ -z $only ]]; then
        record 1 0 "coverage: skipped in-kernel tests" "($n test(s) skipped somewhere, each passed elsewhere; ${#logs[@]} runs)"
    else
        record 0 1 "coverage: skipped in-kernel tests" "(only ever skipped: $only)"
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
    # Every line but halt arrived before the last `info` printed. The
    # halting line is the last line (nothing, a panic included, after it).
    local verdict rx rx_ok=0 typed=$((${#lines[@]} - 1))
    verdict=$(last_line "$log")
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
        local st="QEMU exited $status"; [[ $status -eq 124 || $status -eq 137 ]] && st="timed out after 120 s"
        record 0 1 "console[$1]" "($st, last line '${verdict:-none}', '${rx:-no uart rx line}'; wanted $want)"
        show_log_tail "$log"
    fi
}

# `sdcard DIR` for UART (pl011|mini): the files must be there and say what
# they should, and the kernel8.img must boot on the board's QEMU machine as
# the firmware would start it: with cmdline.txt's bootargs and a devicetree
# shaped like the firmware's (serial0 on GPIO 14/15, no stdout-path).
test_sdcard() { # uart
    local dir="$LOGDIR/sdcard-$BOARD-$1" why=
    # The command rebuilds (and rewrites) the image: no job may be using it.
    jobs_show all
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
        job test_console_input "$BOARD,sdcard-$1" "alias serial0" $rx
}

# In-kernel tests and a few scenario scripts on a Raspberry Pi machine; then
# the console on its mini UART, and the sdcard files.
test_board() { # board [kernel-only]
    local prev=$BOARD
    BOARD=$1
    note "== board $BOARD ($GRANULE granule)"
    job run_kernel_tests "kernel[$BOARD,$GRANULE]" "$LOGDIR/board-$BOARD-$GRANULE.log"
    local scn
    [[ ${2:-} == kernel-only ]] && { BOARD=$prev; return 0; }
    for scn in processes-basic cow-basic cow-selftests only-4K/memfd-shmem; do
        if [[ -e tests/scripts/$scn.scn ]]; then
            APPEND_TAG=$BOARD job test_script "tests/scripts/$scn.scn" 4 0
        else
            job record 0 1 "script[$BOARD,$scn]" "(tests/scripts/$scn.scn is missing)"
        fi
    done
    job test_console_input "$BOARD,pl011" stdout-path interrupt
    UART=mini job test_console_input "$BOARD,mini-uart" pagelab.uart polled
    UART=mini APPEND_TAG="$BOARD,mini-uart" job test_script tests/scripts/processes-basic.scn 4 0
    # As on a real board: the sdcard files, the firmware-shaped devicetree,
    # no pagelab.uart.
    test_sdcard pl011
    test_sdcard mini
    BOARD=$prev
}

# Builds the kernel for the current settings, once no job is running (a
# build rewrites the image a running job may be loading). Records a failure.
build_for_test() { # label
    jobs_show all
    echo "== building the kernel: $1 ($PROFILE)"
    build && return 0
    record 0 1 "build[$1]" "(the kernel does not build)"
    return 1
}

# Everything that runs on a kernel image, for the current $GRANULE.
test_granule() {
    build_for_test "$GRANULE" || return 0
    # The unoptimised build must behave the same: built now, run below.
    local debug_ok=0
    if [[ $PROFILE == release ]]; then
        PROFILE=debug; set_paths
        build_for_test "$GRANULE,debug" && debug_ok=1
        PROFILE=release; set_paths
    fi
    note "== granule $GRANULE: in-kernel tests"
    local el smp cpu cpus=(cortex-a72 cortex-a53 max)
    [[ $GRANULE == 16K ]] && cpus=(max)
    for el in 0 1; do
        for smp in 1 4; do
            job test_kernel "$el" "$smp" "${cpus[0]}"
        done
    done
    for cpu in "${cpus[@]:1}"; do
        job test_kernel 0 1 "$cpu"
        job test_kernel 1 4 "$cpu"
    done
    # RAM sizes: 1.5G needs 2M blocks next to a 1G block; 128M has no 1G block; 3G spans 3 GiB.
    job test_kernel 0 2 "${cpus[0]}" 1536M
    job test_kernel 1 1 "${cpus[0]}" 128M
    job test_kernel 0 4 "${cpus[0]}" 3G
    # GICv2 (QEMU's default for virt; the Raspberry Pi 4 has one too), on one
    # CPU (GICD_ITARGETSR reads as zero there) and on four.
    GIC=2 job test_kernel 0 4 "${cpus[0]}"
    GIC=2 job test_kernel 1 1 "${cpus[0]}"
    if [[ $debug_ok == 1 ]]; then
        PROFILE=debug; set_paths
        job test_kernel 1 4 "${cpus[0]}" 1G debug-build
        PROFILE=release; set_paths
    fi
    if [[ $GRANULE == 4K ]]; then
        job test_console_input "virt,$GRANULE,pl011" stdout-path interrupt
        GIC=2 job test_console_input "virt,$GRANULE,pl011,gicv2" stdout-path interrupt
    fi
    note "== granule $GRANULE: scenario scripts"
    local f prev_cpu=$CPU
    CPU=${cpus[0]}
    for f in tests/scripts/*.scn "tests/scripts/only-$GRANULE"/*.scn; do
        [[ -e $f ]] || continue
        job test_script "$f" 1 0
        job test_script "$f" 4 0
    done
    # Hardware dirty state (TCR_EL1.HD, DBM; needs -cpu max): writable-clean
    # entries that the MMU dirties itself, and no write-protected entry may
    # keep DBM. Every script again in that mode.
    local prev_append=$APPEND
    CPU=max APPEND="pagelab.hw-dbm=1${APPEND:+ $APPEND}" APPEND_TAG=hw-dbm
    for f in tests/scripts/*.scn "tests/scripts/only-$GRANULE"/*.scn; do
        [[ -e $f ]] || continue
        job test_script "$f" 4 0
    done
    CPU=${cpus[0]} APPEND=$prev_append APPEND_TAG=
    for f in tests/scripts/should-fail/*.scn; do
        [[ -e $f ]] || continue
        job test_script "$f" 1 1
    done
    CPU=$prev_cpu
    job test_dbm_smp
    job test_torture 1
    job test_torture 4
    job test_bench "$LOGDIR/bench-$GRANULE.log"
    if [[ -d tests/extra ]]; then
        note "== granule $GRANULE: extra checks"
        for f in tests/extra/*.sh; do
            if [[ -x $f ]]; then
                job test_extra "$f"
            else
                job record 0 1 "extra[$GRANULE,$(basename "$f" .sh)]" "(not executable: chmod +x $f)"
            fi
        done
    fi
    return 0
}

cmd_test() {
    [[ ${PAGELAB_TEST_JOBS:-2} =~ ^[1-9][0-9]?$ ]] || die "PAGELAB_TEST_JOBS must be a number from 1 to 99"
    local g
    PAGELAB_TEST_GRANULES=${PAGELAB_TEST_GRANULES:-}
    PAGELAB_TEST_GRANULES=${PAGELAB_TEST_GRANULES^^}
    for g in ${PAGELAB_TEST_GRANULES:-}; do
        [[ $g == 4K || $g == 16K || $g == 64K ]] || die "PAGELAB_TEST_GRANULES: unknown granule '$g' (4K, 16K, 64K)"
    done
    ensure_deps
    # A fresh log directory: the coverage check reads this run's logs only.
    rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
    jobs_init "$LOGDIR/jobs"
    local start=$SECONDS
    # Whatever stops this function early (a harness bug under set -e, ^C)
    # still ends with a failing total.
    trap 'test_stopped $?' EXIT
    test_host
    test_harness
    test_gates
    # PAGELAB_TEST_GRANULES="4K" narrows a local run; CI runs all three.
    for g in ${PAGELAB_TEST_GRANULES:-4K 16K 64K}; do
        GRANULE=$g; set_paths
        test_granule
    done
    # 39-bit user address space (3-level user tables with 4K pages): the
    # in-kernel tests (AT cross-check included) and every 4K scenario script.
    if [[ " ${PAGELAB_TEST_GRANULES:-4K} " == *" 4K "* ]]; then
        GRANULE=4K VA_BITS=39; set_paths
        if build_for_test "4K,va39"; then
            note "== 4K granule, 39-bit user VA"
            job test_kernel 0 1 cortex-a72 1G va39
            job test_kernel 1 4 cortex-a72 1G va39
            local f
            for f in tests/scripts/*.scn tests/scripts/only-4K/*.scn; do
                [[ -e $f ]] && job test_script "$f" 4 0
            done
        fi
        VA_BITS=48; set_paths
    fi
    # The Raspberry Pi machines (4K granule): in-kernel tests and a few
    # scenario scripts. PAGELAB_TEST_BOARDS="" leaves them out.
    if [[ " ${PAGELAB_TEST_GRANULES:-4K} " == *" 4K "* && -n ${PAGELAB_TEST_BOARDS-x} ]]; then
        GRANULE=4K; set_paths
        if build_for_test "4K,boards"; then
            local b
            for b in ${PAGELAB_TEST_BOARDS-raspi4b raspi3b}; do
                test_board "$b"
            done
        fi
    fi
    # The boards' Cortex-A53/A72 have the 64K granule too: the in-kernel tests.
    if [[ " ${PAGELAB_TEST_GRANULES:-4K 16K 64K} " == *" 64K "* && -n ${PAGELAB_TEST_BOARDS-x} ]]; then
        GRANULE=64K; set_paths
        if build_for_test "64K,boards"; then
            local b
            for b in ${PAGELAB_TEST_BOARDS-raspi4b raspi3b}; do
                test_board "$b" kernel-only
            done
        fi
        GRANULE=4K; set_paths
    fi
    # More QEMU work (the torture runs) goes here, as jobs: `job FUNCTION
    # ARGS...`, where FUNCTION runs QEMU, logs under $LOGDIR and calls
    # `record` (see test_script for the pattern).
    jobs_show all
    check_skip_coverage
    trap - EXIT
    echo "== done in $((SECONDS - start)) s; logs in ${LOGDIR#"$ROOT"/}"
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 ]]
}

kill_tree() { # pid: the process and every descendant
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}

# cmd_test's EXIT trap: it stopped before its end.
test_stopped() { # status
    echo "FAIL qemu-run.sh test stopped early (status $1; a harness error or an interrupt)"
    # Each job's QEMU runs under timeout in a process group of its own: end
    # the whole tree, not only the job's subshell.
    local pid
    for pid in "${JOB_PIDS[@]}"; do kill_tree "$pid"; done
    echo "$PASSED passed, $((FAILED + 1)) failed"
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
test_torture() { # smp: 20,000 ops; at 4 CPUs with 2000 ppm of allocations failing
    local smp=$1 label log m
    [[ $GRANULE == 16K ]] && CPU=max
    T_OPS=20000 SMP=$smp T_SEED=$((smp * 1000 + ${GRANULE%K})) T_FAIL=
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
        { grep -v '^torture-op: ' "$log" | tail -n 12 | sed 's/^/    | /'; } || true
    fi
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

# Sourced (tests/harness/self-test.sh): the functions only.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

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
