#!/usr/bin/env bash
# Types at the interactive console (through the UART's receiver, as a person
# would) and checks:
# - Ctrl-C stops a long command with an error line (`check` of 64 GiB,
#   `walk`, `query` and `ptdump` of a densely mapped range, `pin` and
#   `ref`), and a line typed right behind the Ctrl-C is not lost: it runs
#   next;
# - escape sequences (arrow keys) are no errors, and the up key recalls the
#   last line;
# - walk, atcheck and query over 1 TiB, 100 TiB and nearly all of the user
#   address space finish quickly (time in proportion to the entries they
#   visit).
# Every line that must be refused carries `!"TEXT"`, so the run must end
# with "halting: N passed, 0 failed".
set -euo pipefail
root=${PAGELAB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
img=${PAGELAB_IMG:-$root/target/aarch64-unknown-none-softfloat/release/pagelab.img}
cpu=${PAGELAB_CPU:-cortex-a72}
tmp=$(mktemp -d); [[ -n ${KEEP:-} ]] && echo "keeping $tmp"
log=$tmp/console.log fifo=$tmp/in
mkfifo "$fifo"
exec {fd}<>"$fifo"
: >"$log"
timeout -k 5 300 qemu-system-aarch64 -M virt,gic-version=3 -cpu "$cpu" -smp 2 -m 1G -nodefaults -no-user-config \
    -display none -serial stdio -monitor none -no-reboot -semihosting-config enable=on,target=native \
    -kernel "$img" -append "pagelab.exit=semihosting pagelab.mode=console" <&"$fd" >"$log" 2>&1 &
qpid=$!
cleanup() { kill "$qpid" 2>/dev/null || true; exec {fd}>&-; [[ -n ${KEEP:-} ]] || rm -rf "$tmp"; }
trap cleanup EXIT
fail=0
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fail=1; }

# Waits until PATTERN (an extended regex) has been printed COUNT times.
wait_for() { # pattern count [tenths of a second]
    local t c
    for ((t = 0; t < ${3:-600}; t++)); do
        c=$(tr -d '\r' <"$log" | grep -cE -- "$1" || true)
        ((c >= $2)) && return 0
        kill -0 "$qpid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
prompts=0
# Types LINE at the next prompt.
type_line() { # line
    prompts=$((prompts + 1))
    wait_for 'pagelab> ' "$prompts" || { bad "no prompt #$prompts before '$1'"; return 0; }
    printf '%s\n' "$1" >&"$fd"
}
# Types LINE and, once OUTPUT shows it is running (with no pattern: right
# behind the line, typed ahead), Ctrl-C and the next line.
interrupt() { # line started-pattern next-line
    if [[ -n $2 ]]; then
        type_line "$1"
        wait_for "$2" 1 || bad "'$1' never started"
        printf '\003%s\n' "$3" >&"$fd"
    else
        prompts=$((prompts + 1))
        wait_for 'pagelab> ' "$prompts" || bad "no prompt #$prompts before '$1'"
        printf '%s\n\003%s\n' "$1" "$3" >&"$fd"
    fi
    prompts=$((prompts + 1))
}

type_line 'spawn A'
type_line 'A mmap z 64G prot=r'
interrupt '!"interrupted" A check z 0x00' '^pagelab> !"interrupted" A check z' 'A check z+0x1000:16 0x00'
# 65,536 pages on every granule, so each long command over d outlasts the
# Ctrl-C typed behind it.
case ${PAGELAB_GRANULE:-4K} in 4K) dsize=256M ;; 16K) dsize=1G ;; *) dsize=4G ;; esac
type_line "A mmap d $dsize prot=r"
type_line 'A touch d read'
interrupt '!"interrupted" A walk d' '' 'A check d+0x2000:16 0x00'
# Arrow and function keys are not line text; up recalls the last line (a check: it must
# PASS a second time).
type_line $'\e[D\e[C\e[1;5D\eOPmeminfo'
type_line 'A query d+0x3000:1 expect present zero'
type_line $'\e[A'
# Huge sparse regions: 1 TiB and 100 TiB, a few pages touched.
type_line 'A mmap big 1024G prot=r'
type_line 'A touch big+0x8000000000 read'
type_line 'A touch big+0xffffffffff:1 read'
type_line 'A walk big'
type_line 'A atcheck big'
type_line 'A query big expect !writable !swap'
type_line 'A mmap huge 100000G prot=r'
type_line 'A touch huge+0x100000000000 read'
type_line 'A atcheck huge'
type_line 'A query huge+0:0x100000000000 expect !present'
type_line 'A walk huge'
interrupt '!"interrupted" A query d expect present zero' '' 'A check d+0x4000:16 0x00'
# Inside one block entry, query looks at the pages one by one for the flags
# of the page: Ctrl-C must stop that too (the 64K granule's blocks are 512M).
# 16,384 pages either way, so the query outlasts the Ctrl-C typed behind it.
case ${PAGELAB_GRANULE:-4K} in 4K) blk=2M size=64M ;; 16K) blk=32M size=256M ;; *) blk= ;; esac
if [[ -n $blk ]]; then
    type_line "A mmap h $size thp=$blk"
    type_line 'A write h 0x01'
    type_line 'A query h+0:4K expect block anon'
    interrupt '!"interrupted" A query h expect present anon exclusive' '' 'A check h+0x1000:16 0x01'
fi
# Nearly the whole user address space in one region (from the mmap base to
# the top, 48-bit VA: 131000 GiB of 131072).
type_line 'spawn W'
type_line 'W mmap all 131000G prot=r'
type_line 'W touch all+0x100000000000 read'
type_line 'W atcheck all'
type_line 'W query all expect !writable !swap'
type_line 'W walk all'
# fork visits the entries of the VMA, not every 2M or 1G of its span (it
# was ~67M lookups, seconds, with no Ctrl-C).
# Types LINE and waits for its prompt; sets ms to how long it ran (to 0.1 s).
timed() { # line
    local t0
    type_line "$1"
    t0=$(date +%s%N)
    wait_for 'pagelab> ' $((prompts + 1)) || bad "'$1' never ended"
    ms=$((($(date +%s%N) - t0) / 1000000))
}
type_line 'spawn S'
timed 'S fork T'
small_ms=$ms
timed 'W fork X'
fork_ms=$ms
type_line 'X check all+0x100000000000:16 0x00'
type_line 'X exit'
type_line 'T exit'
type_line 'S exit'
type_line 'W exit'
# pin and ref take their pages in pieces and stop at Ctrl-C, releasing them.
type_line 'A mmap e 512M prot=r'
interrupt '!"interrupted" A ref 1 e' '' 'A check e+0x1000:16 0x00'
interrupt '!"interrupted" A pin 2 e ro' '' 'A check e+0x2000:16 0x00'
# ptdump prints as it walks and stops at Ctrl-C (d has 65536 entries).
interrupt '!"interrupted" ptdump A' '' 'A check d+0x5000:16 0x00'
type_line 'A exit'
type_line 'invariants'
type_line 'halt'
wait "$qpid" && status=0 || status=$?
tr -d '\r' <"$log" >"$tmp/out"
verdict=$(grep -E '^halting: [0-9]+ passed, [0-9]+ failed$' "$tmp/out" | tail -n1 || true)
[[ $status -eq 0 ]] && ok "QEMU exited 0" || bad "QEMU exit status $status"
grep -q 'PASS line 3: refused as expected: interrupted (Ctrl-C)' "$tmp/out" &&
    ok "Ctrl-C stopped a 64 GiB check" || bad "the 64 GiB check was not interrupted"
grep -q 'PASS line 4: A check z+0x1000:16 0x00' "$tmp/out" &&
    ok "the line typed behind Ctrl-C ran next" || bad "the line typed behind Ctrl-C was lost"
grep -q 'PASS line 7: refused as expected: interrupted (Ctrl-C)' "$tmp/out" &&
    ok "Ctrl-C stopped a walk" || bad "the walk was not interrupted"
grep -q 'PASS line 8: A check d+0x2000:16 0x00' "$tmp/out" &&
    ok "the line typed behind Ctrl-C ran next" || bad "the line typed behind Ctrl-C was lost"
grep -q '^  free ' "$tmp/out" && ! grep -q 'error: line 9' "$tmp/out" &&
    ok "arrow keys ignored: meminfo ran" || bad "arrow keys were not ignored"
grep -q 'PASS line 11: A query d+0x3000:1 expect present zero' "$tmp/out" &&
    ok "up arrow recalled the last line" || bad "up arrow did not recall the last line"
grep -q 'PASS line 23: refused as expected: interrupted (Ctrl-C)' "$tmp/out" &&
    ok "Ctrl-C stopped a query" || bad "the query was not interrupted"
grep -q 'PASS line 24: A check d+0x4000:16 0x00' "$tmp/out" &&
    ok "the line typed behind Ctrl-C ran next" || bad "the line typed behind Ctrl-C was lost"
if [[ -n $blk ]]; then
    grep -q 'PASS line 27: A query h+0:4K expect block anon' "$tmp/out" &&
        ok "a $blk block" || bad "no $blk block to query"
    grep -q 'PASS line 28: refused as expected: interrupted (Ctrl-C)' "$tmp/out" &&
        ok "Ctrl-C stopped a query inside a block" || bad "the query inside a block was not interrupted"
    grep -q 'PASS line 29: A check h+0x1000:16 0x01' "$tmp/out" &&
        ok "the line typed behind Ctrl-C ran next" || bad "the line typed behind Ctrl-C was lost"
fi
grep -q 'refused as expected: interrupted' <(grep -A3 -- '!"interrupted" A ref 1 e' "$tmp/out") &&
    ok "Ctrl-C stopped a ref" || bad "the ref was not interrupted"
grep -q 'refused as expected: interrupted' <(grep -A3 -- '!"interrupted" A pin 2 e ro' "$tmp/out") &&
    ok "Ctrl-C stopped a pin" || bad "the pin was not interrupted"
grep -q 'refused as expected: interrupted' <(grep -A12 -- '!"interrupted" ptdump A' "$tmp/out") &&
    ok "Ctrl-C stopped a ptdump" || bad "the ptdump was not interrupted"
((fork_ms - small_ms < 500)) && ok "fork of a 131000 GiB VMA: $fork_ms ms ($small_ms for an empty process)" ||
    bad "fork of a 131000 GiB VMA took $fork_ms ms ($small_ms for an empty process)"
sed -n 's/^PASS line [0-9]*: //p' "$tmp/out" | grep -qxF -- 'X check all+0x100000000000:16 0x00' &&
    ok "the child of the fork reads its page" || bad "the child of the fork did not read its page"
for what in 'A check e+0x1000:16 0x00' 'A check e+0x2000:16 0x00' 'A check d+0x5000:16 0x00'; do
    sed -n 's/^PASS line [0-9]*: //p' "$tmp/out" | grep -qxF -- "$what" &&
        ok "the line typed behind Ctrl-C ran next" || bad "'$what' was lost"
done
for what in 'W atcheck all' 'W query all expect !writable !swap'; do
    grep -qE "^PASS line [0-9]+: $what\$" "$tmp/out" && ok "whole user space: $what" || bad "whole user space: '$what' did not pass"
done
for n in 16 17 21; do
    grep -q "PASS line $n: " "$tmp/out" && ok "huge range line $n" || bad "huge range line $n did not pass"
done
[[ $verdict == 'halting: '*' passed, 0 failed' ]] && ok "$verdict" || bad "verdict '${verdict:-none}'"
if [[ $fail != 0 ]]; then
    grep -E '^(FAIL|error)' "$tmp/out" | head -20 | sed 's/^/    /'
    tail -n 30 "$tmp/out" | cut -c1-200 | sed 's/^/    | /'
fi
exit $fail
