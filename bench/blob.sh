# shellcheck shell=bash
# The warm-blob sections of bench/run.sh (2: one curl stream; 3: BENCH_STREAMS parallel streams; sourced
# by it after regcache started and, unless BENCH_NGINX=0, nginx; BENCH_ONLY=blob runs only these two, with
# a one-layer image of 512 MiB). See run.sh's header for what they measure.
#
# CPU per GB (section 2, issue 12's "server CPU per GB" row), per server and protocol, in core-seconds per
# GB (1e9 bytes) of blob served:
#   per-process   user and system time of the server's process and all its descendants (nginx: master,
#                 workers, cache manager and loader; regcache and docker-registry: one process, all
#                 threads), from /proc/PID/stat, reaped children's time included
#   machine       all CPUs' user + system (system + irq + softirq) time during the GET (/proc/stat) minus
#                 curl's user and system time: what the GET cost the machine apart from the client. The
#                 kernel charges the softirq work of the veth/TCP path (the receiver's TCP processing of
#                 what the sender writes, the ACKs the receiver sends back) to whichever task is on the CPU
#                 when it runs (tick accounting, no IRQ_TIME_ACCOUNTING here), so the per-process split
#                 between server and curl moves with scheduling; the machine figure does not, but it also
#                 counts anything else running on the machine (look at the load average)
# BENCH_PIN=split pins the servers (every thread) to CPU 0 and curl to CPU 1 during sections 2 and 3;
# BENCH_PIN=same pins all of them to CPU 0 (to see what the placement does to the split); unset: no pinning.

NGINX_RESOLVE="--resolve $NGINX_HOST:$NGINX_PORT:$APP_IP"
nginx_url() { echo "https://$NGINX_HOST:$NGINX_PORT/v2/$REPO_NAME/blobs/$BIG_BLOB"; }
CLK_HZ=$(getconf CLK_TCK)
BLOB_PIN=${BENCH_PIN:-}
[[ -z $BLOB_PIN || $BLOB_PIN == split || $BLOB_PIN == same ]] || die "BENCH_PIN must be empty, split or same"
BLOB_CURL=(curl)

stat_cpu() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6; exit }' /proc/stat; }   # busy idle (jiffies)
# user system softirq idle (jiffies; system includes irq and softirq)
stat_cpu_split() { awk '$1 == "cpu" { print $2 + $3, $4 + $7 + $8, $8, $5 + $6; exit }' /proc/stat; }

# blob_pin CPUS: every thread of the three servers onto CPUS (a taskset list)
blob_pin() {
    local spid p
    for spid in "$UP_PID" "$REGCACHE_PID" ${NGINX_PID:+"$NGINX_PID"}; do
        for p in $(tree_pids "$spid"); do taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true; done
    done
}
blob_pin_start() {
    case $BLOB_PIN in
    split) blob_pin 0 && BLOB_CURL=(taskset -c 1 curl) ;;
    same) blob_pin 0 && BLOB_CURL=(taskset -c 0 curl) ;;
    esac
}
blob_pin_end() { [[ -z $BLOB_PIN ]] || { blob_pin "0-$(($(nproc) - 1))"; BLOB_CURL=(curl); }; }

# blob_get URL CA SERVER-PID [CURL-OPTS]: one GET; prints "MB/s server-user server-sys curl-user curl-sys
# machine-user machine-sys machine-softirq machine-busy-% x-cache x-cache-status" (CPU in seconds for this
# GET; machine: /proc/stat over both CPUs, everything included; "-" for a header not sent)
blob_get() {
    local code speed size xc xcs c0 c1 s0 s1 TIMEFORMAT='%U %S'
    c0=$(tree_cpu_us_sy "$3") s0=$(stat_cpu_split)
    # shellcheck disable=SC2086
    { time cli "${BLOB_CURL[@]}" -sS --max-time 120 ${4:-} --cacert "$2" -o /dev/null \
        -w '%{http_code} %{speed_download} %{size_download} x%header{x-cache} x%header{x-cache-status}' "$1" \
        >"$W/curl.out" 2>"$W/curl.err"; } 2>"$W/curl.time" \
        || die "curl $1: $(cat "$W/curl.err")"
    c1=$(tree_cpu_us_sy "$3") s1=$(stat_cpu_split)
    read -r code speed size xc xcs <"$W/curl.out"
    xc=${xc#x} xcs=${xcs#x}
    [[ $code == 200 && $size == "$BIG_SIZE" ]] || die "curl $1: HTTP $code, $size bytes (want 200, $BIG_SIZE)"
    stats get "$speed" "$CLK_HZ" "$c0" "$c1" "$(<"$W/curl.time")" "$s0" "$s1" "${xc:--}" "${xcs:--}"
}

# blob_tls URL CA [CURL-OPTS]: the TLS version and cipher curl negotiates with that server
blob_tls() {
    # shellcheck disable=SC2086
    cli curl -sv --max-time 10 ${3:-} --cacert "$2" -o /dev/null "${1%%/v2/*}/v2/" 2>&1 |
        sed -n 's/^\* SSL connection using \([^ ]*\) \/ \([^ ]*\).*/\1 \2/p' | head -n 1
}
BLOB_TLS=''
# blob_warm: every copy in the page cache and each cached copy complete; nginx: the first GET fills its
# cache (MISS), the second must come from it (HIT). Sets PATHS.
blob_warm() {
    local out
    out=$(blob_get "$(via_url)" "$W/regcache-ca.crt" "$REGCACHE_PID")
    out=$(blob_get "$(direct_url)" "$PKI/ca.crt" "$UP_PID")
    PATHS=(direct via)
    BLOB_TLS="direct $(blob_tls "$(direct_url)" "$PKI/ca.crt"), regcache $(blob_tls "$(via_url)" "$W/regcache-ca.crt")"
    if [[ $BENCH_NGINX == 1 ]]; then
        PATHS+=(nginx)
        out=$(blob_get "$(nginx_url)" "$PKI/ca.crt" "$NGINX_PID" "$NGINX_RESOLVE")
        info "nginx warm-up GET: x-cache-status ${out##* }"
        out=$(blob_get "$(nginx_url)" "$PKI/ca.crt" "$NGINX_PID" "$NGINX_RESOLVE")
        [[ ${out##* } == HIT ]] || die "nginx did not serve the blob from its cache after one GET (x-cache-status ${out##* })"
        info "nginx cache after warm-up: $(du -sh "$NG/cache" | cut -f1)"
        BLOB_TLS+=", nginx $(blob_tls "$(nginx_url)" "$PKI/ca.crt" "$NGINX_RESOLVE") ($(tree_pids "$NGINX_PID" | wc -l) processes:"
        BLOB_TLS+=" $(for p in $(tree_pids "$NGINX_PID"); do ps -o args= -p "$p"; done | sed 's/^nginx: //; s/ process.*//' | sort | uniq -c |
            awk '{ c = $1; $1 = ""; printf "%s%s%s", (NR > 1 ? ", " : ""), c, $0 }'))"
    fi
}

declare -A MBS=() CPU=() CCPU=() BUSY=() SU=() SS=() CU=() CS=() MU=() MS=() MSI=()
# blob_section: HTTP/1.1 and HTTP/2 (all servers offer h2 in ALPN), each run: direct, regcache, nginx
blob_section() {
    local i proto path k out mbs su ss cu cs mu ms msi busy xc xcs
    blob_warm
    blob_pin_start
    for ((i = 1; i <= BLOB_RUNS; i++)); do
        for proto in http1.1 http2; do
            for path in "${PATHS[@]}"; do
                case $path in
                direct) out=$(blob_get "$(direct_url)" "$PKI/ca.crt" "$UP_PID" "--$proto") ;;
                via) out=$(blob_get "$(via_url)" "$W/regcache-ca.crt" "$REGCACHE_PID" "--$proto") ;;
                nginx) out=$(blob_get "$(nginx_url)" "$PKI/ca.crt" "$NGINX_PID" "--$proto $NGINX_RESOLVE") ;;
                esac
                read -r mbs su ss cu cs mu ms msi busy xc xcs <<<"$out"
                [[ $path != via || $xc == HIT ]] || die "the warm blob GET through regcache answered x-cache: $xc"
                [[ $path != nginx || $xcs == HIT ]] || die "the warm blob GET through nginx answered x-cache-status: $xcs"
                k=${path}_$proto
                MBS[$k]+=" $mbs" CPU[$k]+=" $(stats sum "$su" "$ss")" CCPU[$k]+=" $(stats sum "$cu" "$cs")" BUSY[$k]+=" $busy"
                SU[$k]+=" $su" SS[$k]+=" $ss" CU[$k]+=" $cu" CS[$k]+=" $cs" MU[$k]+=" $mu" MS[$k]+=" $ms" MSI[$k]+=" $msi"
                info "blob run $i $proto $path: $mbs MB/s, server CPU user $su s + system $ss s, curl $cu + $cs s, machine $mu + $ms s (softirq $msi s), busy $busy % (x-cache $xc, x-cache-status $xcs)"
            done
        done
    done
    blob_pin_end
}

# run in the client namespace by one shell, so that no per-stream `ip netns exec` sits between the starts:
# PAR_SH STREAMS OUT-PREFIX CURL-ARGS...; starts STREAMS curls at once, waits for all (each bounded by
# --max-time), prints "start end" (epoch seconds: before the first start, after the last end); exits 1
# if any curl failed. Stream J writes OUT-PREFIX.J.out (-w) and OUT-PREFIX.J.err.
# shellcheck disable=SC2016
PAR_SH='n=$1 out=$2; shift 2
pids=()
t0=$(date +%s.%N)
for ((j = 1; j <= n; j++)); do
    curl -sS --max-time 120 -o /dev/null \
        -w "%{http_code} %{size_download} x%header{x-cache} x%header{x-cache-status}" "$@" >"$out.$j.out" 2>"$out.$j.err" &
    pids+=("$!")
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
t1=$(date +%s.%N)
echo "$t0 $t1"
exit "$rc"'
# blob_par URL CA SERVER-PID CHECK [CURL-OPTS]: STREAMS concurrent GETs of URL; every stream must answer
# 200 with the full size and, when CHECK is x-cache or x-cache-status (not "-"), that header HIT. Prints
# "aggregate-MB/s server-CPU-s-per-GET curl-CPU-s-per-GET machine-busy-% wall-s"
blob_par() {
    local url=$1 ca=$2 spid=$3 check=$4 c0 c1 s0 s1 ct j code size xc xcs t0 t1 TIMEFORMAT='%U %S'
    local -a opts=()
    # shellcheck disable=SC2206
    [[ -n ${5:-} ]] && opts=($5)
    rm -f "$W"/par.*
    c0=$(tree_cpu_secs "$spid") s0=$(stat_cpu)
    { time cli "${BLOB_CURL[@]:0:${#BLOB_CURL[@]}-1}" bash -c "$PAR_SH" par-streams "$STREAMS" "$W/par" "${opts[@]}" --cacert "$ca" "$url" \
        >"$W/par.wall" 2>"$W/par.err"; } 2>"$W/par.time" \
        || die "parallel GETs of $url: $(cat "$W/par.err" "$W"/par.*.err 2>/dev/null)"
    c1=$(tree_cpu_secs "$spid") s1=$(stat_cpu)
    for ((j = 1; j <= STREAMS; j++)); do
        code='' size='' xc='' xcs=''
        read -r code size xc xcs <"$W/par.$j.out" || true
        xc=${xc#x} xcs=${xcs#x}
        [[ $code == 200 && $size == "$BIG_SIZE" ]] \
            || die "parallel GET $j of $STREAMS, $url: HTTP $code, $size bytes (want 200, $BIG_SIZE)"
        case $check in
        x-cache) [[ $xc == HIT ]] || die "parallel GET $j of $STREAMS through regcache answered x-cache: ${xc:--}" ;;
        x-cache-status) [[ $xcs == HIT ]] || die "parallel GET $j of $STREAMS through nginx answered x-cache-status: ${xcs:--}" ;;
        esac
    done
    # shellcheck disable=SC2046
    ct=$(stats sum $(<"$W/par.time"))
    read -r t0 t1 <"$W/par.wall" || true
    stats par "$STREAMS" "$BIG_SIZE" "$t0" "$t1" "$c0" "$c1" "$ct" "$s0" "$s1"
}
declare -A PMBS=() PCPU=() PCCPU=() PBUSY=()
streams_section() {
    local i path out mbs cpu ccpu busy wall
    ((STREAMS > 0)) || return 0
    blob_pin_start
    for ((i = 1; i <= BLOB_RUNS; i++)); do
        for path in "${PATHS[@]}"; do
            case $path in
            direct) out=$(blob_par "$(direct_url)" "$PKI/ca.crt" "$UP_PID" - --http1.1) ;;
            via) out=$(blob_par "$(via_url)" "$W/regcache-ca.crt" "$REGCACHE_PID" x-cache --http1.1) ;;
            nginx) out=$(blob_par "$(nginx_url)" "$PKI/ca.crt" "$NGINX_PID" x-cache-status "--http1.1 $NGINX_RESOLVE") ;;
            esac
            read -r mbs cpu ccpu busy wall <<<"$out"
            PMBS[$path]+=" $mbs" PCPU[$path]+=" $cpu" PCCPU[$path]+=" $ccpu" PBUSY[$path]+=" $busy"
            info "parallel run $i $path: $STREAMS streams, $mbs MB/s aggregate in $wall s, server CPU $cpu s/GET, curl CPU $ccpu s/GET, machine busy $busy %"
        done
    done
    blob_pin_end
}

path_label() { case $1 in via) echo regcache ;; *) echo "$1" ;; esac; }
path_name() {
    case $1 in
    direct) echo "direct from docker-registry" ;;
    via) echo "through regcache (x-cache HIT)" ;;
    nginx) echo "through nginx (cache-status HIT)" ;;
    esac
}
# capacity_line PREFIX CPU-ARRAY-NAME KEY-SUFFIX: what each server moves per second of its own CPU
# (blob size / median server CPU per GET), the serving capacity of one core when the clients run
# elsewhere, and regcache's against nginx's
capacity_line() {
    local -n cpus=$2
    local line="$1 server capacity (size / server CPU, MB/s per core):" sep='' path c
    declare -A cap=()
    for path in "${PATHS[@]}"; do
        # shellcheck disable=SC2086
        c=$(median ${cpus[$path$3]})
        cap[$path]=$(stats per-core "$BIG_SIZE" "$c")
        line+="$sep $(path_label "$path") ${cap[$path]}"
        sep=','
    done
    [[ -n ${cap[nginx]:-} ]] && line+="; regcache / nginx = $(ratio "${cap[via]}" "${cap[nginx]}")"
    echo "$line"
}

# blob_cpu_report PROTO: issue 12's CPU-per-GB row for PROTO: per server, user, system and their sum of
# every server process, the machine-accounted figure and curl's, core-s/GB, medians (min-max) over runs
blob_cpu_report() {
    local proto=$1 path k tot mach cl both
    declare -A T=() M=() U=() S=() B=()
    printf '  %-8s %-9s %-17s %-17s %-17s %-17s %-17s %-17s %s\n' "$proto" server "user" "system" "user + system" \
        "curl" "server + curl" "machine - curl" "machine softirq"
    for path in "${PATHS[@]}"; do
        k=${path}_$proto
        # shellcheck disable=SC2086
        U[$path]=$(stats pergb "$BIG_SIZE" ${SU[$k]}) S[$path]=$(stats pergb "$BIG_SIZE" ${SS[$k]})
        tot=$(stats pairsum "${SU[$k]}" "${SS[$k]}")
        mach=$(stats machine "${MU[$k]}" "${MS[$k]}" "${CU[$k]}" "${CS[$k]}")
        cl=$(stats pairsum "${CU[$k]}" "${CS[$k]}")
        both=$(stats pairsum "$tot" "$cl")
        # shellcheck disable=SC2086
        T[$path]=$(stats pergb "$BIG_SIZE" $tot) M[$path]=$(stats pergb "$BIG_SIZE" $mach) B[$path]=$(stats pergb "$BIG_SIZE" $both)
        # shellcheck disable=SC2086,SC2046
        printf '  %-8s %-9s %-17s %-17s %-17s %-17s %-17s %-17s %s\n' "" "$(path_label "$path")" \
            "$(stats msp ${U[$path]})" "$(stats msp ${S[$path]})" "$(stats msp ${T[$path]})" \
            "$(stats msp $(stats pergb "$BIG_SIZE" $cl))" "$(stats msp ${B[$path]})" "$(stats msp ${M[$path]})" \
            "$(stats msp $(stats pergb "$BIG_SIZE" ${MSI[$k]}))"
    done
    [[ -n ${T[nginx]:-} ]] || return 0
    # shellcheck disable=SC2086
    say "  $proto: regcache / nginx, per-process user + system = $(ratio "$(median ${T[via]})" "$(median ${T[nginx]})")" \
        "(user $(ratio "$(median ${U[via]})" "$(median ${U[nginx]})"), system $(ratio "$(median ${S[via]})" "$(median ${S[nginx]})"));" \
        "server + curl = $(ratio "$(median ${B[via]})" "$(median ${B[nginx]})"); machine - curl = $(ratio "$(median ${M[via]})" "$(median ${M[nginx]})");" \
        "target <= 0.75, regcache user $(median ${U[via]}) (target <= 0.35)"
}

blob_report() {
    local cw proto path k line sep
    say ""
    say "warm blob, $((BIG_SIZE >> 20)) MiB over HTTPS, one curl stream, MB/s (median of $BLOB_RUNS; runs interleaved${BLOB_PIN:+; BENCH_PIN=$BLOB_PIN})"
    cw=$((BLOB_RUNS * 5 + 2))   # width of a column of per-run values (at least its header's)
    ((cw >= 13)) || cw=13
    printf "  %-9s %-33s %6s  %-${cw}s %-${cw}s %-${cw}s %s\n" protocol server median "runs (MB/s)" "server CPU s" "curl CPU s" "machine busy %"
    for proto in http1.1 http2; do
        for path in "${PATHS[@]}"; do
            k=${path}_$proto
            # shellcheck disable=SC2086
            printf "  %-9s %-33s %6s  %-${cw}s %-${cw}s %-${cw}s %s\n" "$proto" "$(path_name "$path")" "$(median ${MBS[$k]})" \
                "${MBS[$k]# }" "${CPU[$k]# }" "${CCPU[$k]# }" "${BUSY[$k]# }"
        done
        # shellcheck disable=SC2086
        line="  $proto: regcache / direct = $(ratio "$(median ${MBS[via_$proto]})" "$(median ${MBS[direct_$proto]})")"
        if [[ $BENCH_NGINX == 1 ]]; then
            # shellcheck disable=SC2086
            line+="; regcache / nginx = $(ratio "$(median ${MBS[via_$proto]})" "$(median ${MBS[nginx_$proto]})")"
            # shellcheck disable=SC2086
            line+="; nginx / direct = $(ratio "$(median ${MBS[nginx_$proto]})" "$(median ${MBS[direct_$proto]})") (all measured in this run)"
        else
            line+=" (no nginx in this run: BENCH_NGINX=0 or nginx not installed)"
        fi
        say "$line"
        # what curl alone would allow: blob size / median curl CPU seconds, and the measured median against it
        line="  $proto client ceiling (size / curl CPU):" sep=''
        for path in "${PATHS[@]}"; do
            k=${path}_$proto
            # shellcheck disable=SC2086
            line+="$sep $(path_label "$path") $(stats ceiling "$BIG_SIZE" "$(median ${CCPU[$k]})" "$(median ${MBS[$k]})")"
            sep=','
        done
        say "$line"
        say "$(capacity_line "  $proto" CPU "_$proto")"
    done
    say ""
    say "server CPU per GB of the warm blob, core-s/GB (1e9 bytes), median (min-max) of $BLOB_RUNS runs; user + system ="
    say "  every server process (/proc/PID/stat: nginx master + all descendants; regcache, docker-registry: all threads);"
    say "  machine - curl = both CPUs' busy time during the GET (/proc/stat) minus curl's: the kernel charges the"
    say "  veth/TCP softirq work to whichever task runs, so the per-process split moves with scheduling (bench/blob.sh);"
    say "  server + curl does not depend on that split; machine - curl holds only on an otherwise idle machine (busy %);"
    say "  TLS as curl negotiates it: $BLOB_TLS"
    for proto in http1.1 http2; do blob_cpu_report "$proto"; done
}

streams_report() {
    local cw pw path line
    ((STREAMS > 0)) || return 0
    cw=$((BLOB_RUNS * 5 + 2))
    ((cw >= 13)) || cw=13
    say ""
    say "warm blob, $((BIG_SIZE >> 20)) MiB over HTTPS, $STREAMS parallel curl --http1.1 streams started together, aggregate MB/s"
    say "  ($STREAMS x size / wall time from the start of the first stream to the end of the last; median of $BLOB_RUNS; runs"
    say "  interleaved; CPU per GET = CPU delta over the run / $STREAMS)"
    pw=$((cw >= 17 ? cw : 17))
    printf "  %-33s %6s  %-${cw}s %-${pw}s %-${pw}s %s\n" server median "runs (MB/s)" "server CPU s/GET" "curl CPU s/GET" "machine busy %"
    for path in "${PATHS[@]}"; do
        # shellcheck disable=SC2086
        printf "  %-33s %6s  %-${cw}s %-${pw}s %-${pw}s %s\n" "$(path_name "$path")" "$(median ${PMBS[$path]})" "${PMBS[$path]# }" \
            "${PCPU[$path]# }" "${PCCPU[$path]# }" "${PBUSY[$path]# }"
    done
    say "$(capacity_line "  $STREAMS streams" PCPU '')"
    line="  $STREAMS streams:"
    if [[ $BENCH_NGINX == 1 ]]; then
        # shellcheck disable=SC2086
        line+=" regcache / nginx = $(ratio "$(median ${PMBS[via]})" "$(median ${PMBS[nginx]})");"
    fi
    # shellcheck disable=SC2086
    line+=" regcache / direct = $(ratio "$(median ${PMBS[via]})" "$(median ${PMBS[direct]})")"
    if [[ $BENCH_NGINX == 1 ]]; then
        line+=" (all measured in this run)"
    else
        line+=" (all measured in this run; no nginx: BENCH_NGINX=0 or nginx not installed)"
    fi
    say "$line"
}
