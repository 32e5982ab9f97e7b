# shellcheck shell=bash
# The DNS section of bench/run.sh (sourced by it, after regcache started; BENCH_ONLY=dns runs only
# this section). dnsperf in the client namespace against regcache (APP_IP:53) and against an anchor
# dnsmasq (APP_IP:DNS_ANCHOR_PORT, Debian dnsmasq-base) in the same namespace, which answers the
# intercepted name from its config (--address=/nvcr.io/APP_IP) and forwards the rest, with its
# cache, to the same upstream dnsmasq regcache forwards to (127.0.0.1:DNSMASQ_PORT).
#   intercepted: "nvcr.io A" queries; forwarded: "upstream.nvcr.test A" (answered by the upstream,
#   then from each server's own cache).
# BENCH_DNS_RUNS (default 5, at most 9) interleaved runs of BENCH_DNS_SECS (default 10) seconds each,
# dnsperf -c 8 -q 100, verbose so that every response's latency is seen: p99 is computed from those.
# Prints per server the median qps with every run's figure, the median p99, the loss, the server's
# user + system CPU per answered query (what the server costs, apart from the client's ceiling: on
# 2 vCPUs dnsperf itself takes about a core), and the ratios.

DNS_ANCHOR_PORT=5300
DNS_RUNS=${BENCH_DNS_RUNS:-5}
DNS_SECS=${BENCH_DNS_SECS:-10}
[[ $DNS_RUNS =~ ^[1-9]$ ]] || die "BENCH_DNS_RUNS must be 1..9"
[[ $DNS_SECS =~ ^[1-9][0-9]?$ ]] || die "BENCH_DNS_SECS must be 1..99"

dns_anchor_start() {
    bg dnsmasq-anchor "$APP_NS" dnsmasq -k -C /dev/null --log-facility=- --user=root \
        --pid-file="$W/dnsmasq-anchor.pid" --port "$DNS_ANCHOR_PORT" --listen-address="$APP_IP" \
        --bind-interfaces --no-resolv --no-hosts --cache-size=10000 \
        --address="/$UP_HOST/$APP_IP" --server="127.0.0.1#$DNSMASQ_PORT"
    DNS_ANCHOR_PID=$!
    wait_for dnsmasq-anchor "$DNS_ANCHOR_PID" 50 0.1 \
        cli dig +time=1 +tries=1 -p "$DNS_ANCHOR_PORT" "@$APP_IP" "$UP_HOST" A
}

# dns_run SERVER PORT FILE LOG PID: one dnsperf run; prints "qps p99_ms lost_percent cpu_us", the
# last the server's (PID's) user + system CPU microseconds per answered query
dns_run() {
    local server=$1 port=$2 file=$3 log=$4 pid=$5 c0 c1
    c0=$(cpu_secs "$pid")
    cli timeout $((DNS_SECS + 30)) dnsperf -s "$server" -p "$port" -d "$file" -l "$DNS_SECS" \
        -c 8 -q 100 -t 2 -v >"$LOGS/$log.log" 2>&1 || die "dnsperf (logs/$log.log)"
    c1=$(cpu_secs "$pid")
    local f=$LOGS/$log.log n p99 qps lost
    n=$(grep -c '^> ' "$f" || true)
    p99=nan
    if ((n > 0)); then
        p99=$(awk '/^> / { print $NF * 1000 }' "$f" | sort -g | sed -n "$(((n * 99 + 99) / 100))p")
    fi
    qps=$(awk '/Queries per second:/ { printf "%.0f", $4 }' "$f")
    lost=$(awk '/Queries lost:/ { gsub(/[()%]/, "", $4); print $4 }' "$f")
    echo "${qps:-0} $p99 ${lost:-nan} $(awk -v a="$c0" -v b="$c1" -v n="$n" \
        'BEGIN { if (n > 0) printf "%.2f", (b - a) * 1e6 / n; else print "nan" }')"
}

dns_ratio() { # ARRAY KIND: regcache's median over dnsmasq's
    local -n a=$1
    # shellcheck disable=SC2086
    stats ratio "$(stats median ${a[${2}regcache]})" "$(stats median ${a[${2}dnsmasq]})"
}

dns_section() {
    local kind r path port pid got
    declare -A QPS=() P99=() LOST=() CPU=()
    dns_anchor_start || die "anchor dnsmasq (logs/dnsmasq-anchor.log)"
    echo "$UP_HOST A" >"$W/dns-intercepted.txt"
    echo "$DIRECT_HOST A" >"$W/dns-forwarded.txt"
    local load0 load1
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    info "DNS: $DNS_RUNS interleaved runs of ${DNS_SECS}s per server and name kind (load $load0)"
    for ((r = 1; r <= DNS_RUNS; r++)); do
        for kind in intercepted forwarded; do
            for path in regcache dnsmasq; do
                port=53 pid=$REGCACHE_PID
                [[ $path == dnsmasq ]] && port=$DNS_ANCHOR_PORT pid=$DNS_ANCHOR_PID
                read -r -a got < <(dns_run "$APP_IP" "$port" "$W/dns-$kind.txt" "dnsperf-$kind-$path-$r" "$pid")
                QPS[$kind$path]+=" ${got[0]}" P99[$kind$path]+=" ${got[1]}" LOST[$kind$path]+=" ${got[2]}"
                CPU[$kind$path]+=" ${got[3]}"
            done
        done
        info "DNS round $r: intercepted ${QPS[interceptedregcache]##* } vs ${QPS[intercepteddnsmasq]##* } qps"
    done
    load1=$(cut -d' ' -f1-3 /proc/loadavg)
    say ""
    say "DNS (dnsperf -c 8 -q 100, ${DNS_SECS}s runs, $DNS_RUNS interleaved; load before $load0, after $load1)"
    for kind in intercepted forwarded; do
        for path in regcache dnsmasq; do
            # shellcheck disable=SC2086
            say "$(printf '  %-11s %-8s qps median %8s (runs:%s)  p99 median %s ms (runs:%s)  lost %%:%s' \
                "$kind" "$path" "$(stats median ${QPS[$kind$path]})" "${QPS[$kind$path]}" \
                "$(stats median ${P99[$kind$path]})" "${P99[$kind$path]}" "${LOST[$kind$path]}")"
            # shellcheck disable=SC2086
            say "$(printf '  %-11s %-8s server CPU per query median %s us (runs:%s)' "$kind" "$path" \
                "$(stats median ${CPU[$kind$path]})" "${CPU[$kind$path]}")"
        done
        # shellcheck disable=SC2086
        say "  $kind: regcache / dnsmasq qps = $(dns_ratio QPS "$kind"), p99 = $(dns_ratio P99 "$kind"), CPU per query = $(dns_ratio CPU "$kind")"
    done
    stop_forget "$DNS_ANCHOR_PID"
}
