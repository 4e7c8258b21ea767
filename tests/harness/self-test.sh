#!/usr/bin/env bash
# The harness's own test: qemu-run.sh's verdicts, checked against a fake
# qemu-system-aarch64 (tests/harness/fake-qemu) put first on PATH.
#
# Every way a run can go wrong after it printed a passing summary (QEMU exits
# non-zero, the guest hangs, a panic follows with exit status 0 or not, only
# an intermediate summary was printed, nothing at all was printed) must be
# reported as a failure by each path that runs QEMU: `./qemu-run.sh --script`,
# the in-kernel test run, scenario scripts, should-fail scripts (whose failing
# lines must be exactly the declared `# expect-fail:` set) and the benchmark.
# The asm gate must fail on assembly or system registers outside
# kernel/src/arch/ and name the files.
# A failing case must not stop the next one, and the test job pool must count
# a job that crashed or was killed as a failure, in a fixed output order.
# Control cases must pass, so a harness that fails everything fails here too.
#
# Prints "ok CASE" or "FAIL CASE: why" per case and ends with
# "harness self-test: N passed, M failed"; exit status 0 only when M is 0.
# ./qemu-run.sh test runs it; by hand: tests/harness/self-test.sh
# (QEMU_RUN=path checks another copy of qemu-run.sh).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
QEMU_RUN=${QEMU_RUN:-$ROOT/qemu-run.sh}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export PATH="$HERE/fake-qemu:$PATH"
export FAKE_QEMU_RAN=$T/ran
SHORT=3 # seconds: the timeout for the hanging cases

ok=0 bad=0
pass() { echo "ok $1"; ok=$((ok + 1)); }
fail() { echo "FAIL $1: $2"; bad=$((bad + 1)); }

# Runs "$@" in a subshell that has qemu-run.sh's functions, as `test` uses
# them (set -euo pipefail included), with logs under $T/logs.
harness() {
    local cmd=("$@")
    (
        set --
        # shellcheck source=/dev/null
        source "$QEMU_RUN"
        LOGDIR=$T/logs
        mkdir -p "$LOGDIR"
        IMG=$T/no-kernel.img
        TIMEOUT_KERNEL=$SHORT TIMEOUT_SCRIPT=$SHORT TIMEOUT=$SHORT
        "${cmd[@]}"
    )
}

last_line_of() { grep -v '^[[:space:]]*$' "$1" | tail -n 1; }

# Runs CODE with the remaining words as its "$1", "$2", ... (in harness).
with_args() {
    local code=$1
    shift
    eval "$code"
}

# The record lines (`PASS label ...`, `FAIL label ...`) of harness output,
# in order, as one word each.
verdicts() { grep -oE '^(PASS|FAIL) ' "$1" | tr -d ' ' | paste -sd' ' || true; }

# fake NAME STATUS HANG TEXT: how the fake QEMU behaves in case NAME.
fake() {
    printf '%b' "$4" >"$T/$1.out"
    export FAKE_QEMU_OUT=$T/$1.out FAKE_QEMU_STATUS=$2 FAKE_QEMU_HANG=$3
}

# Case tables: one case per word list; in the output text `_` stands for a space.
GOOD='5_passed,_0_failed\n'
PANIC='\n!!!_KERNEL_PANIC_on_cpu0:_boom\n____at_kernel/src/x.rs:1:1\nbacktrace:\n__#1__0xffff000040001234\n'
# name status hang output want
CASES=(
    "control 0 0 running_4_in-kernel_tests\nPASS_t1\nSKIP_t2:_cannot_apply\nPASS_t3\nPASS_t4\nPASS_invariants\n$GOOD PASS"
    "exit-nonzero 1 0 $GOOD FAIL"
    "hang 0 1 $GOOD FAIL"
    "panic-exit0 0 0 $GOOD$PANIC FAIL"
    "panic-exit101 101 0 $GOOD$PANIC FAIL"
    "intermediate-summary 0 0 3_passed,_0_failed\nPASS_line_4:_selftest_x\n FAIL"
    "silent 1 0 - FAIL"
)

case_fields() { # "name status hang output want" -> NAME STATUS HANG OUT WANT
    read -r NAME STATUS HANG OUT WANT <<<"$1"
    [[ $OUT == - ]] && OUT=
    OUT=${OUT//_/ }
}

echo "# qemu-run.sh under test: $QEMU_RUN"
printf 'spawn A\n' >"$T/plain.scn"

# 1. ./qemu-run.sh --script FILE, as a user runs it (a real process: option
#    parsing, ensure_deps and an incremental build included).
for c in "${CASES[@]}"; do
    case_fields "$c"
    fake "$NAME" "$STATUS" "$HANG" "$OUT"
    : >"$FAKE_QEMU_RAN"
    st=0
    "$QEMU_RUN" --script "$T/plain.scn" --timeout "$SHORT" >"$T/cli.out" 2>"$T/cli.err" || st=$?
    if [[ ! -s $FAKE_QEMU_RAN ]]; then
        fail "cli-script/$NAME" "the fake QEMU did not run (status $st): $(tail -n 3 "$T/cli.err")"
    elif [[ $WANT == PASS && $st -ne 0 ]]; then
        fail "cli-script/$NAME" "a passing run exited $st"
    elif [[ $WANT == FAIL && $st -eq 0 ]]; then
        fail "cli-script/$NAME" "reported as a pass (exit status 0)"
    elif [[ $NAME == hang ]] && ! grep -q "timed out after $SHORT s" "$T/cli.err"; then
        fail "cli-script/$NAME" "no 'timed out after $SHORT s' message"
    else
        pass "cli-script/$NAME"
    fi
done

# 2. The in-kernel test run and 3. a scenario script, as `test` runs them.
for c in "${CASES[@]}"; do
    case_fields "$c"
    fake "$NAME" "$STATUS" "$HANG" "$OUT"
    harness run_kernel_tests "kernel[fake,$NAME]" "$T/logs/kernel-$NAME.log" >"$T/k.out" 2>&1
    got=$(verdicts "$T/k.out")
    if [[ $got == "$WANT" ]]; then pass "kernel-tests/$NAME"; else fail "kernel-tests/$NAME" "wanted $WANT, got '${got:-no verdict (the harness stopped)}'"; fi
    cp "$T/plain.scn" "$T/$NAME.scn"
    harness test_script "$T/$NAME.scn" 1 0 >"$T/s.out" 2>&1
    got=$(verdicts "$T/s.out")
    if [[ $got == "$WANT" ]]; then pass "script/$NAME"; else fail "script/$NAME" "wanted $WANT, got '${got:-no verdict (the harness stopped)}'"; fi
done

# 4. should-fail scripts: the failing lines must be exactly the declared set,
#    and the run must otherwise be sound (exit status 1, the final summary last).
printf '# expect-fail: 3 5\nspawn A\nA check x 0x00\nA exit\nA exit\n' >"$T/sf.scn"
printf 'spawn A\nA check x 0x00\n' >"$T/sf-nodecl.scn"
SF_OUT='FAIL_line_3:_A_check_x_0x00:_no_such_region\nerror:_line_5:_no_such_process\nPASS_end:_invariants\n3_passed,_2_failed\n'
SF_CASES=(
    "control 1 0 $SF_OUT PASS sf"
    "fewer 1 0 FAIL_line_3:_x\nPASS_end:_invariants\n3_passed,_1_failed\n FAIL sf"
    "more 1 0 FAIL_line_3:_x\nerror:_line_5:_y\nFAIL_line_6:_z\n3_passed,_3_failed\n FAIL sf"
    "other-line 1 0 FAIL_line_3:_x\nerror:_line_4:_y\n3_passed,_2_failed\n FAIL sf"
    "end-invariants 1 0 FAIL_line_3:_x\nerror:_line_5:_y\nFAIL_end:_invariants:_z\n2_passed,_3_failed\n FAIL sf"
    "then-panic 101 0 $SF_OUT$PANIC FAIL sf"
    "then-hang 1 1 $SF_OUT FAIL sf"
    "exit0 0 0 $SF_OUT FAIL sf"
    "silent 1 0 - FAIL sf"
    "undeclared 1 0 FAIL_line_2:_x\n1_passed,_1_failed\n FAIL sf-nodecl"
)
for c in "${SF_CASES[@]}"; do
    read -r NAME STATUS HANG OUT WANT FILE <<<"$c"
    [[ $OUT == - ]] && OUT=
    OUT=${OUT//_/ }
    fake "sf-$NAME" "$STATUS" "$HANG" "$OUT"
    cp "$T/$FILE.scn" "$T/sf-$NAME.scn"
    harness test_script "$T/sf-$NAME.scn" 1 1 >"$T/sf.out" 2>&1
    got=$(verdicts "$T/sf.out")
    if [[ $got == "$WANT" ]]; then pass "should-fail/$NAME"; else fail "should-fail/$NAME" "wanted $WANT, got '${got:-no verdict (the harness stopped)}'"; fi
done

# 5. The benchmark: every measurement present, then a broken ending.
harness eval 'for n in "${BENCH_NAMES[@]}" thp_write_fault_2M thp_read_fault_2M; do echo "bench: $n instructions 100"; done' \
    >"$T/bench-lines" 2>/dev/null
if [[ ! -s $T/bench-lines ]]; then
    fail "bench" "cannot list BENCH_NAMES from qemu-run.sh"
else
    for c in "control 0 0 - PASS" "exit-nonzero 1 0 - FAIL" "hang 0 1 - FAIL" "panic-exit0 0 0 $PANIC FAIL" \
        "panic-exit101 101 0 $PANIC FAIL" "no-end-line 0 0 x FAIL"; do
        case_fields "$c"
        { cat "$T/bench-lines"; [[ $NAME != no-end-line ]] && echo "bench done: 0 problem(s)"; printf '%b' "$OUT"; } \
            >"$T/bench-$NAME.out"
        export FAKE_QEMU_OUT=$T/bench-$NAME.out FAKE_QEMU_STATUS=$STATUS FAKE_QEMU_HANG=$HANG
        if harness run_bench "$T/bench.log" >/dev/null 2>&1; then got=PASS; else got=FAIL; fi
        if [[ $got == "$WANT" ]]; then pass "bench/$NAME"; else fail "bench/$NAME" "wanted $WANT, got $got"; fi
    done
fi

# 6. A run that fails (no output at all) must not stop the next one.
fake silent 1 0 ""
cp "$T/plain.scn" "$T/first.scn"
cp "$T/plain.scn" "$T/second.scn"
harness with_args 'test_script "$1" 1 0; FAKE_QEMU_OUT=$2 FAKE_QEMU_STATUS=0 test_script "$3" 1 0' \
    "$T/first.scn" "$T/control.out" "$T/second.scn" >"$T/c.out" 2>&1
got=$(verdicts "$T/c.out")
if [[ $got == "FAIL PASS" ]]; then pass "goes-on/script"; else fail "goes-on/script" "wanted 'FAIL PASS', got '$got'"; fi
harness with_args 'run_kernel_tests "kernel[a]" "$LOGDIR/a.log"; FAKE_QEMU_OUT=$1 FAKE_QEMU_STATUS=0 run_kernel_tests "kernel[b]" "$LOGDIR/b.log"' \
    "$T/control.out" >"$T/c.out" 2>&1
got=$(verdicts "$T/c.out")
if [[ $got == "FAIL PASS" ]]; then pass "goes-on/kernel-tests"; else fail "goes-on/kernel-tests" "wanted 'FAIL PASS', got '$got'"; fi

# 6b. An in-kernel run must show a verdict for every test it announced:
#     tests that vanished (a table cut short, a runner that stopped early)
#     are a failure even with a clean summary last.
fake missing-verdicts 0 0 "running 3 in-kernel tests\nPASS t1\nPASS invariants\n2 passed, 0 failed\n"
harness run_kernel_tests "kernel[fake,missing-verdicts]" "$T/logs/kernel-missing.log" >"$T/k.out" 2>&1
got=$(verdicts "$T/k.out")
if [[ $got == FAIL ]]; then pass "kernel-tests/missing-verdicts"; else fail "kernel-tests/missing-verdicts" "wanted FAIL, got '$got'"; fi

# 6c. qemu_cmd passes pagelab.expect-el on every boot, so a run where the
#     entry-EL test skipped (the argument went missing) is a failure.
fake entry-el-skipped 0 0 "running 2 in-kernel tests\nSKIP boot_entry_el_matches_request: no pagelab.expect-el=N\nPASS t2\nPASS invariants\n2 passed, 0 failed\n"
harness run_kernel_tests "kernel[fake,entry-el-skipped]" "$T/logs/kernel-entry-el.log" >"$T/k.out" 2>&1
got=$(verdicts "$T/k.out")
if [[ $got == FAIL ]]; then pass "kernel-tests/entry-el-skipped"; else fail "kernel-tests/entry-el-skipped" "wanted FAIL, got '$got'"; fi

# 7. The job pool: outputs in start order whatever the finishing order, a
#    job that stops on a harness error or is killed counts as a failure, and
#    the total counts everything.
# shellcheck disable=SC2016  # expanded in the harness subshell
POOL='
slow_pass() { sleep 2; record 1 0 "slow" ""; }
crashes() { record 1 0 "before-crash" ""; false; record 1 0 "after-crash" ""; }
killed() { kill -KILL "$BASHPID"; }
quick_fail() { record 0 1 "quick" ""; }
jobs_init "$LOGDIR/jobs"
job slow_pass
note "== a note"
job crashes
job killed
job quick_fail
jobs_show all
echo "total $PASSED passed, $FAILED failed"
'
if harness eval 'declare -F job jobs_init jobs_show note' >/dev/null 2>&1; then
    harness eval "$POOL" >"$T/pool.out" 2>&1
    order=$(grep -oE '^(PASS|FAIL) +[a-z-]+|^== a note|^total .*' "$T/pool.out" | tr -s ' ' | paste -sd'|')
    want='PASS slow|== a note|PASS before-crash|FAIL job|FAIL job|FAIL quick|total 2 passed, 3 failed'
    if [[ $order == "$want" ]]; then
        pass "job-pool"
    else
        fail "job-pool" "wanted '$want', got '$order'"
        sed 's/^/    | /' "$T/pool.out"
    fi
else
    fail "job-pool" "qemu-run.sh has no job pool (job, jobs_init, jobs_show, note)"
fi

# 8. No test passes by not running: a test that only ever printed SKIP
#    fails the coverage check; once it PASSes in another run, it passes.
# shellcheck disable=SC2016  # expanded in the harness subshell
COVER='
printf "running 2 in-kernel tests\nSKIP t_one: cannot apply\nPASS t_two\nPASS invariants\n2 passed, 0 failed\n" >"$LOGDIR/skip.out"
printf "running 2 in-kernel tests\nPASS t_one\nPASS t_two\nPASS invariants\n3 passed, 0 failed\n" >"$LOGDIR/full.out"
FAKE_QEMU_OUT=$LOGDIR/skip.out FAKE_QEMU_STATUS=0 run_kernel_tests "kernel[skips]" "$LOGDIR/kernel-skips.log"
check_skip_coverage
FAKE_QEMU_OUT=$LOGDIR/full.out FAKE_QEMU_STATUS=0 run_kernel_tests "kernel[full]" "$LOGDIR/kernel-full.log"
check_skip_coverage
'
if harness eval 'declare -F check_skip_coverage' >/dev/null 2>&1; then
    rm -rf "$T/logs"
    harness eval "$COVER" >"$T/cover.out" 2>&1
    got=$(verdicts "$T/cover.out")
    if [[ $got == "PASS FAIL PASS PASS" ]] && grep -q 'only ever skipped: t_one' "$T/cover.out"; then
        pass "skip-coverage"
    else
        fail "skip-coverage" "wanted 'PASS FAIL PASS PASS' (t_one only ever skipped, then passed), got '$got'"
    fi
else
    fail "skip-coverage" "qemu-run.sh has no check_skip_coverage"
fi

# 9. If `test` itself stops early (a harness error under set -e), its last
#    line is still a failing total.
# shellcheck disable=SC2016  # expanded in the harness subshell
# (The output is redirected inside: bash runs a subshell's EXIT trap after
# a redirection on the function call that made it is undone.)
STOP='
exec >"$LOGDIR/stop.out" 2>&1
jobs_init "$LOGDIR/jobs-stop"
trap "test_stopped \$?" EXIT
record 1 0 "before" ""
false
record 1 0 "after" ""
'
if harness eval 'declare -F test_stopped' >/dev/null 2>&1; then
    harness eval "$STOP"
    st=$?
    got=$(last_line_of "$T/logs/stop.out")
    if [[ $st -ne 0 && $got == "1 passed, 1 failed" ]] && ! grep -q after "$T/logs/stop.out"; then
        pass "stopped-early"
    else
        fail "stopped-early" "wanted a non-zero exit and '1 passed, 1 failed' last, got status $st and '$got'"
    fi
else
    fail "stopped-early" "qemu-run.sh has no test_stopped"
fi

# 10. The asm gate: assembly under arch/ (and in a comment) passes; an
#     asm! or an aarch64_cpu register elsewhere fails, naming the files.
mkdir -p "$T/src/arch/aarch64" "$T/src/mm"
printf 'fn f() { unsafe { core::arch::asm!("isb") } }\n' >"$T/src/arch/aarch64/cpu.rs"
printf '// asm!("isb") in a comment is fine\nfn g() {}\n' >"$T/src/mm/tlb.rs"
if harness eval 'declare -F check_asm_in_arch' >/dev/null 2>&1; then
    harness check_asm_in_arch "$T/src" >"$T/asm-ok.out" 2>&1
    printf 'core::arch::global_asm!("nop");\n' >"$T/src/mm/kernel_pgtable.rs"
    printf 'use aarch64_cpu::registers::MIDR_EL1;\n' >"$T/src/kmain.rs"
    harness check_asm_in_arch "$T/src" >"$T/asm-bad.out" 2>&1
    got="$(verdicts "$T/asm-ok.out") $(verdicts "$T/asm-bad.out")"
    if [[ $got == "PASS FAIL" ]] && grep -q 'outside kernel/src/arch/: kmain.rs mm/kernel_pgtable.rs)' "$T/asm-bad.out"; then
        pass "asm-gate"
    else
        fail "asm-gate" "wanted 'PASS FAIL' naming kmain.rs and mm/kernel_pgtable.rs only, got '$got'"
        sed 's/^/    | /' "$T/asm-ok.out" "$T/asm-bad.out"
    fi
else
    fail "asm-gate" "qemu-run.sh has no check_asm_in_arch"
fi

echo "harness self-test: $ok passed, $bad failed"
[[ $bad -eq 0 ]]
