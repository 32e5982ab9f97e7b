# shellcheck shell=bash
# What each image pull of bench/run.sh's section 1 costs, besides its wall time (sourced by run.sh;
# BENCH_ONLY=pull runs only that section). Per pull: user and system CPU seconds of regcache, of the
# client (skopeo: the command's own; dockerd: the daemon and its descendants), of the upstream
# docker-registry, the machine's busy % (both CPUs, everything included), and the requests the
# upstream logged (by method and kind: blob, manifest, other). Per round, after the pulls, one cold
# GET of the largest layer with curl through regcache (empty cache) and one direct: time to first byte,
# total, and regcache's CPU. BENCH_PERF=DIR records regcache under `perf record -g` during every cold
# pull (DIR/perf-CLIENT-cold-R.data; perf must be installed).
# BENCH_BIN_B=PATH (A/B of two builds, same run): each round pulls cold and warm with REGCACHE_BIN ("A",
# kinds cold and warm) and then with PATH (kinds coldB and warmB), each from an empty cache; the cold
# GETs of the layer likewise (paths via and viaB).

PULL_CPU=() # one line per pull: "client kind round wall reg-u reg-s cli-u cli-s up-u up-s busy requests"
PULL_BLOB=() # one line per round: "path round ttfb total reg-u reg-s"
PERF_DIR=${BENCH_PERF:-}
BIN_A=$BIN PULL_AB=-
if [[ -n ${BENCH_BIN_B:-} ]]; then
    [[ -x $BENCH_BIN_B ]] || die "BENCH_BIN_B: no executable at $BENCH_BIN_B"
    PULL_AB='- B'
fi
pull_kinds() { local ab; for ab in $PULL_AB; do printf 'cold%s warm%s ' "${ab#-}" "${ab#-}"; done; }
# pull_bin AB: the build the next regcache start runs ("-": REGCACHE_BIN; B: BENCH_BIN_B)
pull_bin() { if [[ $1 == B ]]; then BIN=$BENCH_BIN_B; else BIN=$BIN_A; fi; }
[[ -z $PERF_DIR ]] || { mkdir -p "$PERF_DIR" && command -v perf >/dev/null; } || die "BENCH_PERF needs perf and a writable DIR"

# tree_us PID...: "user system" CPU seconds of each PID and all their descendants (threads included)
tree_us() {
    local -a all=() queue=("$@")
    local p k
    while ((${#queue[@]})); do
        p=${queue[0]} queue=("${queue[@]:1}")
        [[ -n $p ]] || continue
        all+=("$p")
        for k in $(pgrep -P "$p" 2>/dev/null || true); do queue+=("$k"); done
    done
    for p in "${all[@]}"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
        awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { printf "%.2f %.2f\n", u / hz, s / hz }'
}
pull_stat() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6; exit }' /proc/stat; } # busy idle
# upstream_requests FROM-LINE: the requests docker-registry logged after line FROM-LINE of its log,
# counted as "METHOD:kind=N" (kind: blob, manifest, other)
upstream_requests() {
    tail -n "+$(($1 + 1))" "$LOGS/upstream.log" | grep 'response completed' |
        sed -nE 's/.*http\.request\.method=([A-Z]+).*http\.request\.uri="([^"]*)".*/\1 \2/p' |
        awk '{ k = "other"; if ($2 ~ /\/blobs\//) k = "blob"; else if ($2 ~ /\/manifests\//) k = "manifest"; n[$1 ":" k]++ }
             END { s = ""; for (x in n) s = s (s ? "," : "") x "=" n[x]; print (s ? s : "none") }'
}
# measured_pull CLIENT KIND ROUND PULL-FUNC REF LOG: runs the pull; its seconds into T[CLIENT_KIND], its
# costs into PULL_CPU (PULL-FUNC writes $W/pull.end, the CPU sample at its end, and $W/client.cpu)
measured_pull() {
    local c=$1 kind=$2 r=$3 pull=$4 ref=$5 log=$6 r0 r1 u0 u1 s0 l0 wall perf_pid=''
    r0=$(tree_us "$REGCACHE_PID") u0=$(tree_us "$UP_PID") s0=$(pull_stat)
    l0=$(wc -l <"$LOGS/upstream.log")
    if [[ -n $PERF_DIR && $kind == cold* ]]; then
        perf record -q -F 499 -g -p "$REGCACHE_PID" -o "$PERF_DIR/perf-$c-$kind-$r.data" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    wall=$("$pull" "$ref" "$log")
    [[ -z $perf_pid ]] || { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
    r1=$(tree_us "$REGCACHE_PID") u1=$(tree_us "$UP_PID")
    T[${c}_$kind]+=" $wall"
    PULL_CPU+=("$c $kind $r $wall $(pull_delta "$r0" "$r1") $(<"$W/client.cpu") $(pull_delta "$u0" "$u1") $(stats busy "$s0" "$(<"$W/pull.end")") $(upstream_requests "$l0")")
    info "$c $kind $r: wall regcache-u/s client-u/s registry-u/s busy% requests: ${PULL_CPU[-1]#* * * }"
}
pull_delta() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.2f %.2f", y[1] - x[1], y[2] - x[2] }'; }

# cold_blob_round ROUND AB: the largest layer once through regcache (the build pull_bin chose) with an
# empty cache, once direct
cold_blob_round() {
    local r=$1 path url ca r0 r1 out
    for path in "via${2#-}" direct; do
        if [[ $path == via* ]]; then empty_cache; url=$(via_url) ca=$W/regcache-ca.crt; else url=$(direct_url) ca=$PKI/ca.crt; fi
        r0=$(tree_us "$REGCACHE_PID")
        out=$(cli curl -sS --max-time 300 --cacert "$ca" -o /dev/null -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}' "$url") ||
            die "cold blob GET $url"
        r1=$(tree_us "$REGCACHE_PID")
        read -r code size ttfb total <<<"$out"
        [[ $code == 200 && $size == "$BIG_SIZE" ]] || die "cold blob GET $url: HTTP $code, $size bytes"
        PULL_BLOB+=("$path $r $ttfb $total $(pull_delta "$r0" "$r1")")
        info "cold blob $path $r: first byte ${ttfb} s, total ${total} s, regcache CPU u/s $(pull_delta "$r0" "$r1")"
    done
}

# pull_costs_report: medians per client and kind of every cost recorded, then the cold blob GETs
pull_costs_report() {
    local client kind f line
    say ""
    say "image pull costs, per pull (median of rounds; CPU seconds user/system; busy: both CPUs; upstream requests of the last round)"
    printf '  %-8s %-6s %7s  %-11s %-11s %-11s %5s  %s\n' client path wall regcache client registry busy "upstream requests"
    for client in skopeo dockerd; do
        for kind in direct $(pull_kinds); do
            local -a rows=()
            for line in "${PULL_CPU[@]}"; do [[ $line == "$client $kind "* ]] && rows+=("$line"); done
            ((${#rows[@]})) || continue
            col() { local i v=(); for line in "${rows[@]}"; do read -ra f <<<"$line"; v+=("${f[$1]}"); done; median "${v[@]}"; }
            read -ra f <<<"${rows[-1]}"
            printf '  %-8s %-6s %7s  %-11s %-11s %-11s %5s  %s\n' "$client" "$kind" "$(col 3)" "$(col 4)/$(col 5)" \
                "$(col 6)/$(col 7)" "$(col 8)/$(col 9)" "$(col 10)" "${f[11]}"
        done
    done
    ((${#PULL_BLOB[@]})) || return 0
    say "cold GET of the $((BIG_SIZE >> 20)) MiB layer with curl (each round: through regcache with an empty cache, then direct)"
    for line in "${PULL_BLOB[@]}"; do
        read -ra f <<<"$line"
        say "  $(path_label "${f[0]}") round ${f[1]}: first byte ${f[2]} s, total ${f[3]} s, regcache CPU ${f[4]}/${f[5]} s"
    done
}
