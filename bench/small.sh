# shellcheck shell=bash
# The small-request section of bench/run.sh (sourced by it, after regcache and nginx started;
# BENCH_ONLY=small runs only this section, with a one-layer image of 1 MiB). The image's manifest,
# by digest, warm in both caches (checked: x-cache HIT through regcache, X-Cache-Status HIT through
# nginx), fetched from the client namespace over TLS and HTTP/1.1 with SMALL_CONNS (32) connections:
#   HEAD with hey (-m HEAD -z SECS -c 32), GET with wrk (-t 2 -c 32 -d SECS --latency).
# BENCH_SMALL_RUNS (default 5, at most 9) interleaved runs of BENCH_SMALL_SECS (default 10) seconds
# (regcache, nginx, regcache, nginx...). Prints per server and method the median req/s with every
# run's figure, the median p99, the server's user + system CPU per request (nginx: master and
# workers), the client's (hey or wrk) CPU per request, the ratios, and the load average before
# and after. Every response must be a 200.
# Neither client verifies the certificate (hey and wrk cannot be given a CA); both connect to the
# bench's own namespace only.
#
# BENCH_CALLGRIND=N (with BENCH_ONLY=small): afterwards, regcache is restarted under
# `valgrind --tool=callgrind` (counters off until the warm-up is done), and N HEADs then N GETs of
# the manifest (hey -c 8) are counted; the dumps and the per-request instruction counts are kept in
# BENCH_CALLGRIND_DIR (default /tmp/rcbench-callgrind).

SMALL_CONNS=32
SMALL_RUNS=${BENCH_SMALL_RUNS:-5}
SMALL_SECS=${BENCH_SMALL_SECS:-10}
[[ $SMALL_RUNS =~ ^[1-9]$ ]] || die "BENCH_SMALL_RUNS must be 1..9"
[[ $SMALL_SECS =~ ^[1-9][0-9]?$ ]] || die "BENCH_SMALL_SECS must be 1..99"
SMALL_ACCEPT='Accept: application/vnd.docker.distribution.manifest.v2+json'

small_url() { # SERVER: the manifest by digest through regcache or nginx
    case $1 in
    regcache) echo "https://$UP_HOST/v2/$REPO_NAME/manifests/$IMAGE_DIGEST" ;;
    nginx) echo "https://$APP_IP:$NGINX_PORT/v2/$REPO_NAME/manifests/$IMAGE_DIGEST" ;;
    esac
}

# small_warm SERVER: GETs until the manifest comes from the cache (at most 3), then checks a HEAD too
small_warm() {
    local url h n
    url=$(small_url "$1")
    h=x-cache
    [[ $1 == nginx ]] && h=x-cache-status
    for n in 1 2 3; do
        [[ $(cli curl -ksS --max-time 10 -o /dev/null -H "$SMALL_ACCEPT" -w "%header{$h}" "$url") == HIT ]] && break
        ((n < 3)) || die "the manifest through $1 is not a cache HIT after 3 GETs"
    done
    [[ $(cli curl -ksS --max-time 10 -I -o /dev/null -H "$SMALL_ACCEPT" -w "%header{$h}" "$url") == HIT ]] \
        || die "a manifest HEAD through $1 is not a cache HIT"
}

# small_p99_ms VALUE: wrk's "10.52ms" / "812.00us" / "1.02s" in milliseconds
small_p99_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; printf "%.2f", n }'
}

# small_run SERVER METHOD LOG PID: one run; prints "req/s p99_ms cpu_us_per_request client_cpu_us_per_request"
# (the client's: user + system time of hey or wrk)
small_run() {
    local url=$1 method=$2 log=$LOGS/$3.log pid=$4 c0 c1 rps p99 n bad TIMEFORMAT='%U %S'
    c0=$(tree_cpu_secs "$pid")
    if [[ $method == HEAD ]]; then
        { time cli timeout $((SMALL_SECS + 30)) hey -z "${SMALL_SECS}s" -c "$SMALL_CONNS" -m HEAD -H "$SMALL_ACCEPT" \
            "$url" >"$log" 2>&1; } 2>"$log.time" || die "hey (logs/$3.log)"
        c1=$(tree_cpu_secs "$pid")
        rps=$(awk '/Requests\/sec:/ { printf "%.0f", $2 }' "$log")
        p99=$(awk '/ 99% in / { printf "%.2f", $3 * 1000 }' "$log")
        n=$(awk '/\[200\]/ { print $2 }' "$log")
        bad=$(awk '/^ *\[[0-9]+\]/ && !/\[200\]/ { s += $2 } END { print s + 0 }' "$log")
    else
        { time cli timeout $((SMALL_SECS + 30)) wrk -t 2 -c "$SMALL_CONNS" -d "${SMALL_SECS}s" --latency \
            -H "$SMALL_ACCEPT" "$url" >"$log" 2>&1; } 2>"$log.time" || die "wrk (logs/$3.log)"
        c1=$(tree_cpu_secs "$pid")
        rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$log")
        p99=$(small_p99_ms "$(awk '$1 == "99%" { print $2 }' "$log")")
        n=$(awk '/ requests in / { print $1 }' "$log")
        bad=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$log")
    fi
    [[ ${bad:-0} == 0 && ${n:-0} -gt 0 ]] || die "$method $url: ${bad:-?} responses not 200, ${n:-0} in all (logs/$3.log)"
    echo "${rps:-0} ${p99:-nan} $(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')" \
        "$(awk -v n="$n" '{ printf "%.1f", ($1 + $2) * 1e6 / n }' "$log.time")"
}

small_ratio() { # ARRAY METHOD: regcache's median over nginx's
    local -n a=$1
    # shellcheck disable=SC2086
    stats ratio "$(stats median ${a[${2}regcache]})" "$(stats median ${a[${2}nginx]})"
}

small_section() {
    local r method server pid got load0 load1 size
    declare -A RPS=() P99=() CPU=() CCPU=()
    small_warm regcache
    small_warm nginx
    size=$(cli curl -ksS --max-time 10 -o /dev/null -H "$SMALL_ACCEPT" -w '%{size_download}' "$(small_url regcache)")
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    info "small requests: $SMALL_RUNS interleaved runs of ${SMALL_SECS}s per server and method (load $load0)"
    for ((r = 1; r <= SMALL_RUNS; r++)); do
        for method in HEAD GET; do
            for server in regcache nginx; do
                pid=$REGCACHE_PID
                [[ $server == nginx ]] && pid=$NGINX_PID
                read -r -a got < <(small_run "$(small_url "$server")" "$method" "small-$method-$server-$r" "$pid")
                RPS[$method$server]+=" ${got[0]}" P99[$method$server]+=" ${got[1]}" CPU[$method$server]+=" ${got[2]}"
                CCPU[$method$server]+=" ${got[3]}"
            done
        done
        info "small round $r: HEAD ${RPS[HEADregcache]##* } vs ${RPS[HEADnginx]##* }, GET ${RPS[GETregcache]##* } vs ${RPS[GETnginx]##* } req/s"
    done
    load1=$(cut -d' ' -f1-3 /proc/loadavg)
    say ""
    say "small requests: manifest by digest ($size bytes), warm, $SMALL_CONNS connections, TLS, HTTP/1.1;"
    say "  HEAD with hey, GET with wrk; ${SMALL_SECS}s runs, $SMALL_RUNS interleaved; load before $load0, after $load1"
    for method in HEAD GET; do
        for server in regcache nginx; do
            # shellcheck disable=SC2086
            say "$(printf '  %-4s %-8s req/s median %7s (runs:%s)  p99 median %s ms (runs:%s)' "$method" "$server" \
                "$(stats median ${RPS[$method$server]})" "${RPS[$method$server]}" \
                "$(stats median ${P99[$method$server]})" "${P99[$method$server]}")"
            # shellcheck disable=SC2086
            say "$(printf '  %-4s %-8s server CPU per request median %s us (runs:%s); client CPU per request median %s us' \
                "$method" "$server" "$(stats median ${CPU[$method$server]})" "${CPU[$method$server]}" \
                "$(stats median ${CCPU[$method$server]})")"
        done
        say "  $method: regcache / nginx req/s = $(small_ratio RPS "$method"), p99 = $(small_ratio P99 "$method"), CPU per request = $(small_ratio CPU "$method")"
    done
}

# small_cg_load METHOD N: N requests with hey -c 8 (8 new TLS connections), then a callgrind dump;
# prints the instructions counted since the last dump
small_cg_load() {
    local log=$LOGS/callgrind-$1-$2.log dump
    cli timeout 900 hey -n "$2" -c 8 -m "$1" -H "$SMALL_ACCEPT" "$(small_url regcache)" >"$log" 2>&1 \
        || die "hey under callgrind (logs/${log##*/})"
    grep -q "\[200\].*$2 responses" "$log" || die "not $2 200s (logs/${log##*/})"
    callgrind_control -d "$1-$2" "$REGCACHE_PID" >/dev/null
    dump=$(ls -t "$CG_DIR"/callgrind.out."$REGCACHE_PID".* | head -1)
    awk '/^(summary|totals):/ { print $2; exit }' "$dump"
}

# small_callgrind N: regcache under callgrind; instructions per warm HEAD and per warm GET, user space
# only: counters zeroed after the warm-up, a load of N/5 and one of N requests per method, each dumped;
# per request = the difference over the 4N/5 extra requests (the 8 TLS handshakes of each load cancel)
small_callgrind() {
    local n=$1 method small big
    CG_DIR=${BENCH_CALLGRIND_DIR:-/tmp/rcbench-callgrind}
    mkdir -p "$CG_DIR"
    stop_regcache
    REGCACHE_WRAP=(valgrind --tool=callgrind "--callgrind-out-file=$CG_DIR/callgrind.out.%p")
    REGCACHE_WAIT=1500
    start_regcache
    small_warm regcache
    callgrind_control -z "$REGCACHE_PID" >/dev/null
    for method in HEAD GET; do
        small=$(small_cg_load "$method" $((n / 5)))
        big=$(small_cg_load "$method" "$n")
        say "callgrind: warm manifest $method: $((n / 5)) requests $small Ir, $n requests $big Ir:" \
            "$(((big - small) / (n - n / 5))) Ir per request (dumps in $CG_DIR, pid $REGCACHE_PID)"
    done
    stop_regcache
    REGCACHE_WRAP=() REGCACHE_WAIT=150
}
