#!/usr/bin/env bash
# Boots the kernel with pagelab.crash=KIND for each kind of fatal error and
# checks that it prints a readable report and makes QEMU exit with the panic
# status (101), instead of hanging or exiting 0.
# Env (set by ./qemu-run.sh test): PAGELAB_IMG, PAGELAB_ROOT.
set -euo pipefail
root=${PAGELAB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
img=${PAGELAB_IMG:-$root/target/aarch64-unknown-none-softfloat/release/pagelab.img}
[[ -f $img ]] || { echo "crash-reports: no kernel image at $img (run ./qemu-run.sh build)"; exit 1; }
log=$(mktemp); trap 'rm -f "$log"' EXIT
fail=0
# The unmapped address's first empty table entry: level 0 with 4K, level 1
# with 16K (both level-0 entries are in use) and 64K (3 levels, start at 1).
case ${PAGELAB_GRANULE:-4K} in 4K) top=0 ;; *) top=1 ;; esac
check() { # kind, machine, expected text...
    local kind=$1 machine=$2; shift 2
    local status=0
    timeout -k 5 60 qemu-system-aarch64 -M "$machine" -cpu "${PAGELAB_CPU:-cortex-a72}" -smp 2 -m 512M \
        -nodefaults -no-user-config -display none -serial stdio -monitor none -no-reboot \
        -semihosting-config enable=on,target=native -kernel "$img" \
        -append "pagelab.exit=semihosting pagelab.crash=$kind" </dev/null >"$log" 2>&1 || status=$?
    local missing=()
    for want in "$@"; do grep -qF -- "$want" "$log" || missing+=("$want"); done
    if [[ $status -eq 101 && ${#missing[@]} -eq 0 ]]; then
        echo "PASS crash=$kind ($machine): report printed, exit status 101"
    else
        echo "FAIL crash=$kind ($machine): exit status $status, missing: ${missing[*]:-none}"
        tail -n 20 "$log" | sed 's/^/    | /'
        fail=1
    fi
}
for m in virt virt,virtualization=on; do
    check stack-overflow "$m" "*** kernel stack overflow ***" "translation fault, level 3" "KERNEL PANIC" "backtrace:"
    check unmapped-read "$m" "unexpected exception: Synchronous from EL1 with SP_EL1" "translation fault, level $top, read (WnR=0)" "FAR 0xffff6800dead0000" "elr 0x" "KERNEL PANIC"
    check undefined-instruction "$m" "EC 0x00 Unknown" "not valid for this exception" "KERNEL PANIC"
    check panic "$m" "KERNEL PANIC on cpu0: panic requested" "kmain.rs" "backtrace:"
done
exit $fail
