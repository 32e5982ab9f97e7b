# shellcheck shell=bash
# The memory section of bench/run.sh (issue 12's last row; sourced by it; BENCH_ONLY=memory runs only
# this section, with a one-layer image of 512 MiB). The layer is made warm in both caches (x-cache HIT
# through regcache, X-Cache-Status HIT through nginx); then, for each server, runs interleaved
# (regcache, nginx, ...; BENCH_MEM_RUNS, default 3, at most 9), the server's memory is sampled every
# 0.2 s (bench/memory.py: VmRSS and PSS of regcache's process, or nginx's master plus workers, summed)
# through four phases:
#   idle     2 s, no client
#   conns    2 s with MEM_CONNS (1,000) idle TLS connections open (handshake done, no request)
#   both     the same connections plus MEM_STREAMS (8) concurrent curl --http1.1 GETs of the layer,
#            each --limit-rate MEM_RATE (100M) so that they last several seconds
#   streams  the 8 GETs alone (connections closed)
# BENCH_MEM_ORDER=streams measures "streams" right after "idle" instead of last: run 1 of each order, on
# fresh processes, then gives what the connections alone and the streams alone add (memory an allocator
# took is seldom given back, so later phases and runs start from a higher floor).
# Prints per phase and server the median and peak RSS and PSS in MiB, the medians over runs and the
# ratios regcache / nginx, and the load average before and after. Every GET must answer 200 with the
# full size and a cache HIT; every idle connection must still be open when the streams end (regcache
# closes a connection without a request after first_byte_timeout, 10 s by default, which
# bench/regcache.toml.in raises to 120 s for this; nginx after 60 s).

MEM_CONNS=1000
MEM_STREAMS=8
MEM_RATE=${BENCH_MEM_RATE:-100M}
MEM_RUNS=${BENCH_MEM_RUNS:-3}
[[ $MEM_RUNS =~ ^[1-9]$ ]] || die "BENCH_MEM_RUNS must be 1..9"
MEM_PY=$HERE/memory.py
MEM_ORDER=${BENCH_MEM_ORDER:-conns}
[[ $MEM_ORDER == conns || $MEM_ORDER == streams ]] || die "BENCH_MEM_ORDER must be conns or streams"

mem_target() { # SERVER: "address port sni cafile" of its TLS listener
    case $1 in
    regcache) echo "$APP_IP 443 $UP_HOST $W/regcache-ca.crt" ;;
    nginx) echo "$APP_IP $NGINX_PORT $NGINX_HOST $PKI/ca.crt" ;;
    esac
}
mem_curl() { # SERVER CURL-ARGS...: curl from the client namespace to SERVER's copy of the layer
    local s=$1 host port sni ca
    shift
    read -r host port sni ca <<<"$(mem_target "$s")"
    cli curl -sS --max-time 300 --http1.1 --cacert "$ca" --resolve "$sni:$port:$host" "$@" \
        "https://$sni:$port/v2/$REPO_NAME/blobs/$BIG_BLOB"
}
mem_pids() { # SERVER: the pids to sample (nginx: the master; memory.py adds its children)
    case $1 in regcache) echo "$REGCACHE_PID" ;; nginx) echo "$(cat "$NG/nginx.pid")" ;; esac
}

# mem_warm SERVER: GETs until the layer comes from the cache (at most 3)
mem_warm() {
    local h=x-cache n out
    [[ $1 == nginx ]] && h=x-cache-status
    for n in 1 2 3; do
        out=$(mem_curl "$1" -o /dev/null -w "%{http_code} %{size_download} %header{$h}")
        info "memory: warm-up GET $n through $1: $out"
        [[ $out == "200 $BIG_SIZE HIT" ]] && return 0
    done
    die "the layer through $1 is not a cache HIT after 3 GETs"
}

# mem_sample SERVER NAME SECS|-: samples into $W/mem.NAME for SECS, or until mem_sample_stop
mem_sample() {
    rm -f "$W/mem.stop"
    local max=${3/-/300}
    "$PY" "$MEM_PY" sample "$W/mem.$2" "$W/mem.stop" "$max" $(mem_pids "$1") &
    MEM_SAMPLER=$!
    if [[ $3 != - ]]; then wait "$MEM_SAMPLER"; MEM_SAMPLER=''; fi
}
mem_sample_stop() { touch "$W/mem.stop"; wait "$MEM_SAMPLER"; MEM_SAMPLER=''; }

# mem_streams SERVER LOG: MEM_STREAMS concurrent GETs; each must be 200, full size, a cache HIT
mem_streams() {
    local s=$1 h=x-cache j out pids=()
    [[ $s == nginx ]] && h=x-cache-status
    for ((j = 1; j <= MEM_STREAMS; j++)); do
        mem_curl "$s" --limit-rate "$MEM_RATE" -o /dev/null -w "%{http_code} %{size_download} %header{$h}" \
            >"$W/mem.get.$j" 2>"$LOGS/$2.$j.err" &
        pids+=("$!")
    done
    for j in "${pids[@]}"; do wait "$j" || die "a GET through $s failed (logs/$2.*.err)"; done
    for ((j = 1; j <= MEM_STREAMS; j++)); do
        out=$(<"$W/mem.get.$j")
        [[ $out == "200 $BIG_SIZE HIT" ]] || die "GET $j of $MEM_STREAMS through $s: $out (want 200 $BIG_SIZE HIT)"
    done
}

# mem_run SERVER RUN: the four phases; leaves $W/mem.SERVER.RUN.PHASE
mem_run() {
    local s=$1 r=$2 host port sni ca n held
    read -r host port sni ca <<<"$(mem_target "$s")"
    mem_sample "$s" "$s.$r.idle" 2
    [[ $MEM_ORDER == streams ]] && mem_streams_only "$s" "$r"
    rm -f "$W/mem.ready" "$W/mem.hold.stop"
    cli "$PY" "$MEM_PY" hold "$host" "$port" "$sni" "$ca" "$MEM_CONNS" 120 "$W/mem.ready" "$W/mem.hold.stop" \
        >"$W/mem.held" 2>"$LOGS/mem-hold.$s.$r.log" &
    local holder=$! t
    for ((t = 0; t < 600; t++)); do [[ -s $W/mem.ready ]] && break; sleep 0.1; done
    n=$(cat "$W/mem.ready" 2>/dev/null || echo 0)
    [[ $n == "$MEM_CONNS" ]] || die "only ${n:-0} of $MEM_CONNS TLS connections to $s within 60 s (logs/mem-hold.$s.$r.log)"
    mem_sample "$s" "$s.$r.conns" 2
    mem_sample "$s" "$s.$r.both" -
    mem_streams "$s" "mem-get.$s.$r.both"
    mem_sample_stop
    touch "$W/mem.hold.stop"
    wait "$holder" || die "the connection holder for $s failed (logs/mem-hold.$s.$r.log)"
    read -r held n <"$W/mem.held"
    [[ $held == "$n" ]] || die "$s closed $((n - held)) of the $n idle connections during the streams"
    [[ $MEM_ORDER == streams ]] || mem_streams_only "$s" "$r"
}
mem_streams_only() { # SERVER RUN
    mem_sample "$1" "$1.$2.streams" -
    mem_streams "$1" "mem-get.$1.$2.streams"
    mem_sample_stop
}

# mem_breakdown PID: RSS of PID and its children split into anonymous (heap, stacks) and file-backed
# (the binary and libraries) pages, from smaps_rollup, and the number of processes and threads
mem_breakdown() {
    local pids p
    pids=("$1" $(cat "/proc/$1/task/$1/children" 2>/dev/null))
    for p in "${pids[@]}"; do cat "/proc/$p/smaps_rollup"; grep '^Threads:' "/proc/$p/status"; done |
        awk -v n="${#pids[@]}" '$1 == "Rss:" { r += $2 } $1 == "Anonymous:" { a += $2 } $1 == "Threads:" { t += $2 }
            END { printf "RSS %.1f MiB = anonymous %.1f + file-backed %.1f; %d processes, %d threads", r / 1024, a / 1024, (r - a) / 1024, n, t }'
}
mem_summary() { "$PY" "$MEM_PY" summary "$1"; } # FILE: median_rss peak_rss median_pss peak_pss samples

memory_section() {
    local r s p line
    say "memory: load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    mem_warm regcache
    mem_warm nginx
    for ((r = 1; r <= MEM_RUNS; r++)); do
        for s in regcache nginx; do
            mem_run "$s" "$r"
            for p in idle conns both streams; do
                line=$(mem_summary "$W/mem.$s.$r.$p")
                say "memory: run $r $s $p: RSS median/peak $(cut -d' ' -f1,2 <<<"$line") MiB, PSS median/peak $(cut -d' ' -f3,4 <<<"$line") MiB ($(cut -d' ' -f5 <<<"$line") samples)"
            done
        done
    done
    say "memory: medians over $MEM_RUNS runs (MiB; regcache / nginx):"
    for p in idle conns both streams; do
        local -A med=()
        local k
        for s in regcache nginx; do
            for k in 1 2 3 4; do
                # shellcheck disable=SC2046
                med[$s.$k]=$(stats median $(for ((r = 1; r <= MEM_RUNS; r++)); do mem_summary "$W/mem.$s.$r.$p" | cut -d' ' -f"$k"; done))
            done
        done
        say "memory: $p: RSS median $(printf '%s / %s' "${med[regcache.1]}" "${med[nginx.1]}") ($(stats ratio "${med[regcache.1]}" "${med[nginx.1]}")), peak ${med[regcache.2]} / ${med[nginx.2]} ($(stats ratio "${med[regcache.2]}" "${med[nginx.2]}")); PSS median ${med[regcache.3]} / ${med[nginx.3]}, peak ${med[regcache.4]} / ${med[nginx.4]} ($(stats ratio "${med[regcache.4]}" "${med[nginx.4]}"))"
        unset med
    done
    for s in regcache nginx; do say "memory: $s after the runs: $(mem_breakdown "$(mem_pids "$s")")"; done
    say "memory: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}
