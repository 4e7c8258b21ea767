#!/usr/bin/env bash
# Feeds thousands of random and malformed console lines (tests/tools/
# gen-fuzz-script.py, fixed seeds) to the kernel as a script. Many lines are
# errors, so the script itself fails; what must hold: no panic, the kernel
# reaches the end (a final spawn/mmap/write/check works), the closing
# invariants pass, and QEMU exits with 1 (failures counted), not 101 (panic)
# or a timeout.
set -euo pipefail
root=${PAGELAB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
img=${PAGELAB_IMG:-$root/target/aarch64-unknown-none-softfloat/release/pagelab.img}
cpu=${PAGELAB_CPU:-cortex-a72}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
for seed in 1 2 3; do
    python3 "$root/tests/tools/gen-fuzz-script.py" "$seed" 3000 > "$tmp/fuzz.scn"
    status=0
    timeout -k 5 300 qemu-system-aarch64 -M virt -cpu "$cpu" -smp 2 -m 512M -nodefaults -no-user-config \
        -display none -serial stdio -monitor none -no-reboot -semihosting-config enable=on,target=native \
        -kernel "$img" -initrd "$tmp/fuzz.scn" -append "pagelab.exit=semihosting pagelab.mode=script" \
        </dev/null >"$tmp/out.log" 2>&1 || status=$?
    lines=$(wc -l < "$tmp/fuzz.scn")
    # The summary must be the last line (nothing, a panic included, after it).
    summary=$(tr -d '\r' < "$tmp/out.log" | grep -v '^[[:space:]]*$' | tail -n1 | grep -E '^[0-9]+ passed, [0-9]+ failed$' || true)
    final_ok=$(grep -c "^PASS line $((lines - 2)): Final check m 0x42" "$tmp/out.log" || true)
    if [[ $status -eq 1 && -n $summary ]] && grep -q "^PASS end: invariants" "$tmp/out.log" && [[ $final_ok -eq 1 ]]; then
        echo "PASS fuzz seed $seed: $lines lines, kernel alive, invariants hold ($summary)"
    else
        echo "FAIL fuzz seed $seed: QEMU status $status, summary '${summary:-none}', final check seen: $final_ok"
        grep -nE "PANIC|unexpected exception" "$tmp/out.log" | head -5 || true
        tail -n 25 "$tmp/out.log" | sed 's/^/    | /'
        fail=1
    fi
done
exit $fail
