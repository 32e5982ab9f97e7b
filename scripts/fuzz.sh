#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, AddressSanitizer, the nightly toolchain),
# one after the other, and prints per target its executions, coverage and speed.
#
#   scripts/fuzz.sh                    brief: 20 s per target (CI; about 2 minutes after the build)
#   scripts/fuzz.sh 1800               30 minutes per target
#   scripts/fuzz.sh 600 dns_request    10 minutes, one target
#
# Environment: FUZZ_RUNS=N stops each target after N executions as well (whichever comes first);
# FUZZ_JOBS_NICE=10 runs libFuzzer under `nice -n 10`.
# New inputs go to fuzz/target/corpus/<target>/ (not committed); the committed seeds in
# fuzz/corpus/<target>/ are only read. A crash is saved under fuzz/artifacts/<target>/ and is
# reproduced with `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
# Ends with the line `fuzz: N passed, M failed`; exits non-zero if any target failed.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=${1:-20}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
logs=target/fuzz-logs
mkdir -p "$logs"

cargo +nightly fuzz build >/dev/null

passed=0 failed=0
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t"
    log=$logs/$t.log
    opts=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    [[ -n ${FUZZ_RUNS:-} ]] && opts+=(-runs="$FUZZ_RUNS")
    start=$(date +%s)
    status=0
    nice -n "${FUZZ_JOBS_NICE:-0}" cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" \
        -- "${opts[@]}" >"$log" 2>&1 </dev/null || status=$?
    took=$(($(date +%s) - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
    if ((status == 0)); then
        passed=$((passed + 1))
        verdict=ok
    else
        failed=$((failed + 1))
        verdict="FAILED (exit $status; see fuzz/$log and fuzz/artifacts/$t/)"
        grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' \
            "$log" | head -20 || true
    fi
    printf '%-17s %s: %s execs, %s exec/s, %s, peak rss %s MB, %ss\n' \
        "$t" "$verdict" "${runs:-?}" "${rate:-?}" "${cov:-cov: ?}" "${rss:-?}" "$took"
done
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
