# shellcheck shell=bash
# Phase faults (issue 9, "Faults, end to end"), each on a fresh appliance (its own state dir holding the
# run's CA; nvcr.io/nvidia/fault:1 has one 24 MiB layer): upstream reset mid-blob, kill -9 mid-fill, a
# full 64 MiB tmpfs cache, 5,000 idle connections plus slowloris clients, SIGTERM during a pull.
# Upstream faults go through scripts/e2e/tcp_relay.py behind an iptables DNAT rule in APP's nat OUTPUT
# chain (regcache and the upstreams share APP; the relay marks its own upstream connections, which the
# rule skips). Figures for RELIABILITY.md in "INFO: FIGURES:" lines.
PHASE_NEEDS=(stopped-appliance upstreams client-dockerd)

RELAY_PORT=8443
RELAY_MARK=0x77
RSS_CAP_KIB=$((256 << 10))
# the drain grace period of `serve` (src/app/mod.rs GRACE)
GRACE_S=$(sed -n 's/.*const GRACE: Duration = Duration::from_secs(\([0-9]*\)).*/\1/p' "$REPO/src/app/mod.rs" 2>/dev/null)
GRACE_S=${GRACE_S:-10}
FAULT=$W/fault

# ---------------------------------------------------------------------------------------------------
# faults: helpers

fault_blob() { # the fault image's layer: its largest blob
    local d
    for d in $(awk '$1 == "blob" {print $2}' "$W/images/fault/push-plan"); do
        echo "$(stat -c %s "$W/images/fault/blobs/sha256/${d#sha256:}") $d"
    done | sort -n | awk 'END {print $2}'
}

# fault_instance NAME [CACHE-DIR]: a fresh state dir holding the run's CA, and its config
fault_instance() {
    local st=$FAULT/$1
    mkdir -p "$st/state/certs"
    cp "$RC/state/certs/ca.crt" "$RC/state/certs/ca.key" "$st/state/certs/"
    render_config "$st/config.toml" "$st/state" "$PKI/ca.crt"
    if [[ -n ${2:-} ]]; then sed -i "s|^\\[cache\\]\$|[cache]\\ndir = \"$2\"|" "$st/config.toml"; fi
    echo "$st"
}
# the process started last by start_fault_regcache, in the calling (sub)shell
FR_PID=''
start_fault_regcache() { # CONFIG NAME [SHELL-COMMANDS run first in its mount namespace]
    local pre=${3:-true} name=$2
    ip netns exec "$APP_NS" sh -c "ulimit -n 65536 2>/dev/null || ulimit -n \$(ulimit -Hn); $pre"' && exec "$@"' sh \
        "$BIN" serve --config "$1" >"$LOGS/$name.access.log" 2>"$LOGS/$name.log" </dev/null 9<&- &
    FR_PID=$!
    echo "$FR_PID" >>"$FAULT/pids"
    wait_for "$name 'listening for https'" "$FR_PID" 150 0.2 grep -q 'listening for https on' "$LOGS/$name.log"
    echo "regcache $name pid $FR_PID, open files limit $(awk '/^Max open files/ {print $4}' "/proc/$FR_PID/limits")"
}
stop_fault_regcache() {
    [[ -n $FR_PID ]] || return 0
    kill -TERM "$FR_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do alive "$FR_PID" || break; sleep 0.2; done
    alive "$FR_PID" && kill -KILL "$FR_PID" 2>/dev/null
    wait "$FR_PID" 2>/dev/null || true
    FR_PID=''
}
RELAY_PID=''
relay_start() { # NAME UPSTREAM-IP RELAY-ARGS...: relay on IP:RELAY_PORT, DNAT of IP:443 to it
    local name=$1 ip=$2; shift 2
    ip netns exec "$APP_NS" "$PY" "$ASSETS/tcp_relay.py" --listen "$ip:$RELAY_PORT" --to "$ip:443" --mark "$RELAY_MARK" \
        "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9<&- &
    RELAY_PID=$!
    echo "$RELAY_PID" >>"$FAULT/pids"
    wait_for "relay $name" "$RELAY_PID" 50 0.1 grep -q 'relay listening' "$LOGS/$name.log"
    app iptables -t nat -I OUTPUT -d "$ip/32" -p tcp --dport 443 -m mark ! --mark "$RELAY_MARK" \
        -j DNAT --to-destination "$ip:$RELAY_PORT"
    app iptables -t nat -S OUTPUT
}
relay_stop() {
    app iptables -t nat -F OUTPUT 2>/dev/null || true
    [[ -n $RELAY_PID ]] && { kill -TERM "$RELAY_PID" 2>/dev/null; wait "$RELAY_PID" 2>/dev/null; }
    RELAY_PID=''
}
# run in each fault check's subshell on exit: what it started goes, whatever happened
fault_teardown() { set +e; stop_fault_regcache; relay_stop; return 0; }
# after each fault check, in the main shell: anything of ours still alive (a check killed early)
fault_reap() {
    local pid
    app iptables -t nat -F OUTPUT 2>/dev/null || true
    [[ -f $FAULT/pids ]] || return 0
    for pid in $(cat "$FAULT/pids"); do
        if alive "$pid" && grep -qaE "regcache|tcp_relay|conn_holder" "/proc/$pid/cmdline" 2>/dev/null; then
            say "e2e: fault check left pid $pid running; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    : >"$FAULT/pids"
}

cache_verify() { # CONFIG: `regcache cache verify` reports nothing bad
    local out
    out=$(app "$BIN" cache verify --config "$1" 2>&1)
    echo "cache verify: $out"
    grep -qE '^verified [0-9]+ objects, .*: 0 bad' <<<"$out" || { echo "cache verify found bad objects"; return 1; }
}
objects_whole() { # STATE-DIR: every object file hashes to its name
    local f n=0 bad=0
    while IFS= read -r f; do
        n=$((n + 1))
        [[ $(sha256sum <"$f" | cut -d' ' -f1) == "${f##*/}" ]] || { echo "corrupt object $f"; bad=$((bad + 1)); }
    done < <(find "$1" -path '*/objects/sha256/*' -type f ! -name '*.meta')
    echo "$n object files, $bad not matching their digest"
    [[ $bad == 0 ]]
}
tmp_files() { find "$1/cache/tmp" -type f 2>/dev/null | wc -l; }
largest_tmp() { find "$1/cache/tmp" -type f -printf '%s\n' 2>/dev/null | sort -n | tail -n 1; }
# throttled_pull NAME RATE: a fresh instance (its dir in ST) behind a relay throttled to RATE bytes/s, and
# skopeo copying the fault image through it in the background (pid in CPID, log $FAULT/NAME-1.log)
throttled_pull() {
    ST=$(fault_instance "$1")
    relay_start "relay-$1" "$NVCR_IP" --rate "$2"
    start_fault_regcache "$ST/config.toml" "regcache-fault-$1"
    fault_copy "$FAULT/$1-1" >"$FAULT/$1-1.log" 2>&1 &
    CPID=$!
}
# fill_size STATE-DIR BYTES PID: waits (up to 30 s, while PID lives) for a temp file larger than BYTES;
# prints the largest size seen last
fill_size() {
    local i size=''
    for ((i = 0; i < 600; i++)); do
        size=$(largest_tmp "$1")
        [[ ${size:-0} -gt $2 ]] && break
        alive "$3" || break
        sleep 0.05
    done
    echo "$size"
}
wait_tmp_empty() { # STATE-DIR: fills end (bounded)
    local i
    for ((i = 0; i < 50; i++)); do [[ $(tmp_files "$1") == 0 ]] && return 0; sleep 0.2; done
    echo "temp files left in $1/cache/tmp:"; ls -l "$1/cache/tmp"; return 1
}
fault_copy() { # DEST-DIR: skopeo copies nvcr.io/nvidia/fault:1 from CLI
    rm -rf "$1"; mkdir -p "$1"
    isolated "$CLI_NS" timeout 180 skopeo copy "docker://$NVCR_HOST/nvidia/fault:1" "oci:$1:x"
}
fault_copied_ok() { # DEST-DIR: the copy holds the fault image's layer, whole
    local layer
    layer=$(fault_blob)
    [[ -f $1/blobs/sha256/${layer#sha256:} ]] || { echo "layer $layer missing from the copy"; return 1; }
    expect_eq "$(sha256_of "$1/blobs/sha256/${layer#sha256:}")" "$layer" "digest of the copied layer"
}
retrying() { # CMD...: up to 4 attempts, 5 s apart; logs "retrying: ..." with the attempt that succeeded
    local i
    for ((i = 1; i <= 4; i++)); do
        if "$@"; then echo "retrying: $1 succeeded on attempt $i"; return 0; fi
        echo "retrying: $1 attempt $i failed"
        [[ $i == 4 ]] || sleep 5
    done
    return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------------------------------------------
# faults: the checks (each runs in run_check's subshell, fault_teardown on its exit)

# B1: the upstream connection is reset after 4 MiB of the 24 MiB layer, once
fault_reset_mid_blob() {
    trap fault_teardown EXIT
    local st rc1=0 cut
    st=$(fault_instance reset)
    relay_start relay-reset "$NVCR_IP" --cut-after $((4 << 20)) --cuts 1
    start_fault_regcache "$st/config.toml" regcache-fault-reset
    fault_copy "$FAULT/reset-1" || rc1=$?
    cut=$(grep -c 'CUT (reset)' "$LOGS/relay-reset.log" || true)
    echo "first pull: skopeo exit $rc1; relay resets: $cut"
    grep 'CUT' "$LOGS/relay-reset.log" || true
    expect_eq "$cut" 1 "connections the relay reset mid-blob"
    wait_tmp_empty "$st/state"
    cache_verify "$st/config.toml"
    objects_whole "$st/state"
    if [[ $rc1 == 0 ]]; then fault_copied_ok "$FAULT/reset-1"; fi
    echo "retry:"
    fault_copy "$FAULT/reset-2"
    fault_copied_ok "$FAULT/reset-2"
    wait_tmp_empty "$st/state"
    cache_verify "$st/config.toml"
    objects_whole "$st/state"
    echo "FIGURES: reset after $((4 << 20)) bytes; first pull exit $rc1; retry ok; corrupt objects 0"
}

# B2: kill -9 once the layer's temp file passes 6 MiB (upstream throttled to 8 MiB/s), restart, pull again
fault_kill9_mid_fill() {
    trap fault_teardown EXIT
    local st size='' rc=0 cpid left
    throttled_pull kill9 $((8 << 20))
    st=$ST cpid=$CPID
    size=$(fill_size "$st/state" $((6 << 20)) "$cpid")
    echo "largest temp file: ${size:-none} bytes"
    [[ ${size:-0} -gt $((6 << 20)) ]] || { echo "the fill never passed 6 MiB"; cat "$FAULT/kill9-1.log"; return 1; }
    kill -KILL "$FR_PID"
    wait "$FR_PID" 2>/dev/null || true
    FR_PID=''
    wait "$cpid" || rc=$?
    left=$(tmp_files "$st/state")
    echo "killed; the client's pull exited $rc ($(tail -n 1 "$FAULT/kill9-1.log")); temp files left: $left"
    [[ $rc != 0 ]] || fault_copied_ok "$FAULT/kill9-1"
    start_fault_regcache "$st/config.toml" regcache-fault-kill9-restart
    grep -m1 'removed unfinished downloads' "$LOGS/regcache-fault-kill9-restart.log" | cut -c1-200 || true
    expect_eq "$(tmp_files "$st/state")" 0 "temp files after the restart"
    cache_verify "$st/config.toml"
    objects_whole "$st/state"
    fault_copy "$FAULT/kill9-2"
    fault_copied_ok "$FAULT/kill9-2"
    wait_tmp_empty "$st/state"
    cache_verify "$st/config.toml"
    echo "FIGURES: killed at ${size} bytes of the layer; $left temp file(s) left, removed at restart; pull after restart ok"
}

# B3: the cache on a 64 MiB tmpfs (mounted in regcache's own mount namespace) filled up to ~6 MiB free
fault_disk_full() {
    trap fault_teardown EXIT
    local st dir root layer listed i code free
    st=$(fault_instance full "$FAULT/full/cache")
    dir=$FAULT/full/cache
    mkdir -p "$dir"
    start_fault_regcache "$st/config.toml" regcache-fault-full \
        "mount -n -t tmpfs -o size=64m,mode=700 rce2e-full '$dir'"
    root=/proc/$FR_PID/root
    grep -F " $dir " "/proc/$FR_PID/mounts"
    dd if=/dev/zero of="$root$dir/filler" bs=1M count=58 status=none
    # (df reads the caller's mount table; statfs through /proc/PID/root sees regcache's tmpfs)
    free=$(stat -f -c '%a %S' "$root$dir" | awk '{print int($1 * $2 / 1024)}')
    echo "tmpfs $(stat -f -c %T "$root$dir"): $free KiB free"
    layer=$(fault_blob)
    local first=ok
    if fault_copy "$FAULT/full-1" && fault_copied_ok "$FAULT/full-1"; then
        echo "pull while the cache is full: whole"
    else
        first=failed
        grep -E "GET /v2/nvidia/fault/blobs/$layer " "$LOGS/regcache-fault-full.access.log" | tail -n 1 || true
        alive "$FR_PID" || { echo "regcache died"; return 1; }
        if fault_copy "$FAULT/full-1b" && fault_copied_ok "$FAULT/full-1b"; then
            echo "the first pull while the cache is full FAILED; a retry passed through whole"
        else
            echo "the first pull while the cache is full FAILED, and a retry too"
        fi
    fi
    alive "$FR_PID" || { echo "regcache died"; return 1; }
    grep -m1 -E 'cache write failed|No space' "$LOGS/regcache-fault-full.log" | cut -c1-300 || echo "(no write failure logged)"
    listed=$(nsenter -t "$FR_PID" -m "$BIN" cache ls --config "$st/config.toml" 2>&1 | grep -c "^$layer" || true)
    echo "layer in cache ls while full: $listed"
    rm -f "$root$dir/filler"
    echo "filler removed: $(stat -f -c '%a %S' "$root$dir" | awk '{print int($1 * $2 / 1024)}') KiB free"
    # caching resumes: GET the layer until it is stored (bounded: 15 tries, 4 s apart; a write error
    # pauses caching for 30 s)
    for ((i = 0; i < 15; i++)); do
        attack_get https GET "$NVCR_HOST" "/v2/nvidia/fault/blobs/$layer" >/dev/null
        code="$A_CODE ${A_XC:-none}"
        [[ $A_SUM == "$layer" ]] || { echo "GET $i: body is not the layer ($A_CODE)"; return 1; }
        listed=$(nsenter -t "$FR_PID" -m "$BIN" cache ls --config "$st/config.toml" 2>&1 | grep -c "^$layer" || true)
        echo "GET $i: $code; layer in cache ls: $listed"
        [[ $listed == 1 && $A_XC == HIT ]] && break
        sleep 4
    done
    alive "$FR_PID" || { echo "regcache died"; return 1; }
    echo "FIGURES: first pull with $((free / 1024)) MiB free of 64 MiB: $first; caching resumed: layer listed $listed, x-cache ${A_XC:-none} after $i retries"
    expect_eq "$listed" 1 "the layer in cache ls after space returned"
    expect_eq "$A_XC" HIT "x-cache of a GET after space returned"
    expect_eq "$first" ok "the first pull while the cache filesystem was full (passed through whole)"
}

# B4: 5,000 idle connections (HTTPS: 1,250 TCP-only + 1,250 after a TLS handshake; mirror: 2,500) and two
# slowloris clients, while skopeo, dockerd and a mirror client pull; RSS sampled throughout
fault_idle_connections() {
    trap '[[ -n $HPID ]] && kill -TERM "$HPID" 2>/dev/null; fault_teardown' EXIT
    local st base held i peak s pulls_ok=1 pids=() rcs=() established layer
    HPID=''
    st=$(fault_instance idle)
    start_fault_regcache "$st/config.toml" regcache-fault-idle
    base=$(rss_kib "$FR_PID")
    ip netns exec "$CLI_NS" sh -c 'ulimit -n 20000 2>/dev/null || ulimit -n $(ulimit -Hn); exec "$@"' sh "$PY" \
        "$ASSETS/conn_holder.py" --tcp "$APP_IP:443:1250" --tls "$APP_IP:443:1250:$GHCR_HOST" --tcp "$APP_IP:80:2500" \
        --slowloris "$APP_IP:80" --slowloris-tls "$APP_IP:443:$GHCR_HOST" --every 1 --hold 240 --open-timeout 120 \
        --ready-file "$FAULT/idle.ready" --stop-file "$FAULT/idle.stop" >"$FAULT/idle.json" 2>"$LOGS/conn-holder.log" &
    HPID=$!
    echo "$HPID" >>"$FAULT/pids"
    for ((i = 0; i < 1300; i++)); do [[ -s $FAULT/idle.ready ]] && break; alive "$HPID" || break; sleep 0.1; done
    [[ -s $FAULT/idle.ready ]] || { echo "the connection holder did not get ready"; cat "$LOGS/conn-holder.log"; return 1; }
    cat "$FAULT/idle.ready"
    established=$(app ss -Htn state established "( sport = :443 or sport = :80 )" | wc -l)
    held=$(rss_kib "$FR_PID")
    local hold_until=$((SECONDS + 40))
    echo "RSS before: $base KiB; with the connections open: $held KiB; established on :443/:80: $established"
    layer=$(fault_blob)
    # each client may retry (up to 4 attempts, 5 s apart), as dockerd does on its own: with a connection
    # cap (limits.max_connections) the idle connections may hold every slot until they time out
    retrying fault_copy "$FAULT/idle-skopeo" >"$FAULT/idle-skopeo.log" 2>&1 & pids+=($!)
    if [[ $DOCKER_OK == 1 ]]; then retrying docker_pull_fresh ghcr.io/acme/tool:v1 tool >"$FAULT/idle-docker.log" 2>&1 & pids+=($!); fi
    retrying cli curl -sS --max-time 120 "http://$APP_IP/v2/nvidia/fault/blobs/$layer?ns=$NVCR_HOST" -o "$FAULT/idle-mirror.bin" \
        >"$FAULT/idle-mirror.log" 2>&1 & pids+=($!)
    peak=$held
    for ((i = 0; i < 1800; i++)); do
        s=$(rss_kib "$FR_PID"); [[ $s -gt $peak ]] && peak=$s
        local running=0 p
        for p in "${pids[@]}"; do alive "$p" && running=1; done
        [[ $running == 0 ]] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do rc=0; wait "$p" || rc=$?; rcs+=("$rc"); done
    echo "pulls exited: ${rcs[*]} (skopeo$([[ $DOCKER_OK == 1 ]] && echo ', dockerd'), mirror curl) after $((i / 10)) s"
    for p in "${rcs[@]}"; do [[ $p == 0 ]] || pulls_ok=0; done
    [[ ${rcs[0]} == 0 ]] && fault_copied_ok "$FAULT/idle-skopeo" || { tail -n 5 "$FAULT/idle-skopeo.log"; pulls_ok=0; }
    [[ $DOCKER_OK == 1 ]] && { tail -n 3 "$FAULT/idle-docker.log"; }
    local attempts
    attempts=$(cat "$FAULT"/idle-{skopeo,docker,mirror}.log 2>/dev/null | sed -n 's/^retrying: \(.*\)$/\1/p' | paste -sd';' || true)
    echo "attempts: $attempts"
    expect_eq "$(sha256_of "$FAULT/idle-mirror.bin")" "$layer" "digest of the mirror client's layer" || pulls_ok=0
    # hold on for 40 s in all: slowloris bytes keep coming; a first-byte or idle timeout would show (and
    # hyper drops a request head still unfinished after 30 s)
    while [[ $SECONDS -lt $hold_until ]] && alive "$HPID"; do
        s=$(rss_kib "$FR_PID"); [[ $s -gt $peak ]] && peak=$s
        sleep 0.5
    done
    local end_est
    end_est=$(app ss -Htn state established "( sport = :443 or sport = :80 )" | wc -l)
    echo "established on :443/:80 after 40 s: $end_est"
    touch "$FAULT/idle.stop"
    wait "$HPID" || true
    HPID=''
    sleep 1
    local after
    after=$(rss_kib "$FR_PID")
    echo "holder report: $(cat "$FAULT/idle.json")"
    jq -r '.targets[] | "  \(.target): wanted \(.wanted), opened \(.opened), failed \(.failed), still open at the end \(.open_at_end) \(.errors)"' \
        "$FAULT/idle.json" || true
    jq -r '.slowloris[] | "  \(.target): sent \(.bytes_sent) bytes, closed after \(.closed_after_s) s: \(.outcome)"' \
        "$FAULT/idle.json" || true
    alive "$FR_PID" || { echo "regcache died"; return 1; }
    echo "FIGURES: connections opened $(jq '[.targets[].opened] | add' "$FAULT/idle.json") ($(cat "$FAULT/idle.ready" | tr -d '\n')," \
        "$established established at the appliance then), still open after 40 s" \
        "$(jq '[.targets[].open_at_end] | add' "$FAULT/idle.json") (appliance side: $end_est established);" \
        "pull attempts: $attempts; slowloris: $(jq -r '[.slowloris[] | "\(.bytes_sent) B, \(.outcome)"] | join("; ")' "$FAULT/idle.json");" \
        "RSS KiB before $base, held $held, peak $peak, after $after"
    expect_eq "$pulls_ok" 1 "all pulls finished with the right bytes"
    [[ $peak -lt $RSS_CAP_KIB ]] || { echo "peak RSS $peak KiB >= cap $RSS_CAP_KIB KiB"; return 1; }
}

# B5: SIGTERM while skopeo pulls (upstream throttled to 2 MiB/s: the 24 MiB layer would take ~12 s,
# longer than the grace period)
fault_sigterm() {
    trap fault_teardown EXIT
    local st i size cpid rc=0 t0 refused='' probe waited ec
    throttled_pull sigterm $((2 << 20))
    st=$ST cpid=$CPID
    size=$(fill_size "$st/state" $((2 << 20)) "$cpid")
    [[ ${size:-0} -gt $((2 << 20)) ]] || { echo "no fill in flight"; cat "$FAULT/sigterm-1.log"; return 1; }
    t0=$(date +%s.%N)
    kill -TERM "$FR_PID"
    # stops accepting: a new connection to the mirror is refused within 3 s
    for ((i = 0; i < 30; i++)); do
        probe=0
        cli curl -sS --max-time 1 -o /dev/null "http://$APP_IP/v2/" 2>/dev/null || probe=$?
        if [[ $probe != 0 ]]; then refused="after $("$PY" "$LIB/stats.py" elapsed "$t0" "$(date +%s.%N)" 1) s (curl exit $probe)"; break; fi
        sleep 0.1
    done
    echo "new connections refused: ${refused:-no, still answered 3 s after SIGTERM}"
    for ((i = 0; i < (GRACE_S + 5) * 10; i++)); do alive "$FR_PID" || break; sleep 0.1; done
    waited=$("$PY" "$LIB/stats.py" elapsed "$t0" "$(date +%s.%N)" 1)
    if alive "$FR_PID"; then echo "still running $waited s after SIGTERM (grace ${GRACE_S} s)"; return 1; fi
    ec=0; wait "$FR_PID" || ec=$?
    FR_PID=''
    wait "$cpid" || rc=$?
    echo "regcache exited $ec, $waited s after SIGTERM (grace $GRACE_S s); the pull exited $rc: $(tail -n 1 "$FAULT/sigterm-1.log")"
    grep -E 'shutting down|drain' "$LOGS/regcache-fault-sigterm.log" | cut -c1-200 || true
    [[ $rc != 0 ]] || fault_copied_ok "$FAULT/sigterm-1"
    echo "FIGURES: exit code $ec after $waited s; pull exit $rc; refused new connections ${refused:-never}"
    [[ -n $refused ]] || return 1
    expect_eq "$ec" 0 "exit code"
    "$PY" "$LIB/stats.py" le "$waited" "$((GRACE_S + 3))" || { echo "took longer than grace + 3 s"; return 1; }
}

fault_check() { run_check "$@"; fault_reap; }
phase_run() {
    mkdir -p "$FAULT"
    : >"$FAULT/pids"
    command -v iptables >/dev/null || say "INFO: iptables missing: the upstream fault checks will fail"
    fault_check "fault: upstream connection reset mid-blob: the pull fails or retries, a retry succeeds, cache verify finds nothing bad, no partial object" \
        fault_reset_mid_blob
    fault_check "fault: kill -9 of regcache mid-fill, restart: temp file removed, nothing partial served, the pull succeeds" \
        fault_kill9_mid_fill
    fault_check "fault: cache on a full 64 MiB tmpfs: pulls pass through whole, no crash, caching resumes when space returns" \
        fault_disk_full
    fault_check "fault: 5,000 idle connections + slowloris on :443 and :80 while skopeo, dockerd and a mirror client pull: pulls finish, RSS < $((RSS_CAP_KIB >> 10)) MiB" \
        fault_idle_connections
    fault_check "fault: SIGTERM during a pull: stops accepting, exits 0 within the ${GRACE_S} s grace period (+3 s)" fault_sigterm
    grep -h '^FIGURES:' "$W"/checks/*-fault_* 2>/dev/null | sed 's/^/INFO: /' || true
}
