# shellcheck shell=bash
# Checks and their report (sourced by scripts/e2e.sh): each check runs a function with its output in its
# own log under $W/checks/, and prints one PASS/FAIL line; the run ends with "e2e: N passed, M failed".
# State: PASSED, FAILED, NCHECK (counters).

PASSED=0 FAILED=0 NCHECK=0

check_log() { # NAME: the log file of check number NCHECK
    printf '%s/checks/%03d-%s.log' "$W" "$NCHECK" "$(printf '%s' "$1" | tr -c 'a-zA-Z0-9._-' '_' | cut -c1-60)"
}
# run_check NAME FUNC ARGS...: runs FUNC in a subshell with errexit, output to its own log.
run_check() {
    local name=$1 log rc; shift
    NCHECK=$((NCHECK + 1))
    log=$(check_log "$name")
    set +e
    ( set -e; "$@" ) >"$log" 2>&1
    rc=$?
    set -e
    report "$name" "$rc" "$log"
}
# run_check_here NAME FUNC ARGS...: the same in the current shell, for FUNCs that change its state
# (they must handle their own errors: errexit does not apply).
run_check_here() {
    local name=$1 log rc=0; shift
    NCHECK=$((NCHECK + 1))
    log=$(check_log "$name")
    "$@" >"$log" 2>&1 || rc=$?
    report "$name" "$rc" "$log"
}
report() { # NAME RC LOG
    local name=$1 rc=$2 log=$3
    if [[ $rc == 0 ]]; then
        PASSED=$((PASSED + 1)); say "PASS: $name"
    else
        FAILED=$((FAILED + 1)); say "FAIL: $name   [${log#"$W"/}]"
        tail -n 8 "$log" | sed 's/^/    | /'
    fi
    return 0
}
skip() { say "SKIP: $*"; }
info() { say "INFO: $*"; }

expect_eq() { # GOT WANT WHAT
    if [[ $1 == "$2" ]]; then echo "ok: $3 = $1"; else echo "mismatch: $3: got '$1', want '$2'"; return 1; fi
}

attempt() { # LOG FUNC ARGS...: runs FUNC under errexit (like run_check), output to LOG; prints succeeds|fails
    local log=$1 rc; shift
    set +e
    ( set -e; "$@" ) >"$log" 2>&1
    rc=$?
    set -e
    if [[ $rc == 0 ]]; then echo succeeds; else echo fails; fi
}
outcome_is() { # GOT WANT LOG [ERE]: GOT is WANT, and LOG has a line matching ERE
    tail -n 12 "$3"
    expect_eq "$1" "$2" "outcome"
    [[ -z ${4:-} ]] || grep -qE "$4" "$3" || { echo "no line matching /$4/ in ${3#"$W"/}"; return 1; }
}
