# shellcheck shell=bash
# Processes of a test world (sourced by scripts/e2e.sh and bench/run.sh): start in the background with a
# log, wait for readiness with a bounded retry, stop by PID (TERM, then KILL), CPU time of a process tree.
# The caller sets LIB_TAG (message prefix, e.g. e2e) and LOGS (the log folder) before starting anything.
# State: PIDS (every background process started, in order) and PIDNAME (pid -> log name).

PIDS=()
declare -A PIDNAME=()

say() { printf '%s\n' "$*"; }

bg() { # NAME NS CMD...: start CMD in namespace NS in the background, output to $LOGS/NAME.log
    local name=$1 ns=$2; shift 2
    ip netns exec "$ns" "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9<&- &
    track_pid "$!" "$name"
}
track_pid() { PIDS+=("$1"); PIDNAME[$1]=$2; } # PID NAME: stopped by stop_tracked at the end

alive() { kill -0 "$1" 2>/dev/null; }

# wait_for DESC PID TRIES DELAY CMD...: bounded retry; fails early when PID (if not "-") died.
wait_for() {
    local desc=$1 pid=$2 tries=$3 delay=$4 i; shift 4
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [[ $pid != - ]] && ! alive "$pid"; then
            say "$LIB_TAG: $desc: process ${PIDNAME[$pid]:-$pid} exited" >&2
            [[ -f $LOGS/${PIDNAME[$pid]:-none}.log ]] && tail -n 20 "$LOGS/${PIDNAME[$pid]}.log" >&2
            return 1
        fi
        sleep "$delay"
    done
    say "$LIB_TAG: timed out waiting for $desc" >&2
    return 1
}

stop_pid() { # PID: TERM, up to 10 s, then KILL; reap
    local pid=$1 i
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then
        say "$LIB_TAG: ${PIDNAME[$pid]:-$pid} ignored SIGTERM for 10 s, killing" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

forget_pid() { # PID: drop from PIDS after it was stopped
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
stop_forget() { local pid; for pid in "$@"; do [[ -z $pid ]] || { stop_pid "$pid"; forget_pid "$pid"; }; done; }
stop_tracked() { local i; for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done; }

# single_run LOCKFILE: exit unless no other run of that script holds its lock (fd 9)
single_run() {
    exec 9<"$1"
    flock -n 9 || { say "$LIB_TAG: another ${1##*/} run holds the lock" >&2; exit 1; }
}

cpu_secs() { # PID: user+system CPU seconds so far
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
tree_pids() { # PID: PID and all its descendants (nginx: master, workers, cache manager and loader)
    local todo=("$1") p
    while ((${#todo[@]})); do
        p=${todo[0]} todo=("${todo[@]:1}")
        echo "$p"
        # shellcheck disable=SC2207
        todo+=($(pgrep -P "$p" 2>/dev/null || true))
    done
}
# tree_cpu_us_sy PID: "user system" CPU seconds of PID and its descendants, with the time of children
# they reaped (cutime, cstime: an nginx cache loader that exits between two samples still counts)
tree_cpu_us_sy() {
    local files=() p
    for p in $(tree_pids "$1"); do files+=("/proc/$p/stat"); done
    cat "${files[@]}" 2>/dev/null | awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); u += $12 + $14; s += $13 + $15 }
        END { printf "%.2f %.2f\n", u / hz, s / hz }' || true
}
tree_cpu_secs() { # PID: user + system CPU seconds of PID and its descendants (nginx's workers)
    local u s
    read -r u s < <(tree_cpu_us_sy "$1")
    "$PY" "$LIB/stats.py" sum "$u" "$s"
}
