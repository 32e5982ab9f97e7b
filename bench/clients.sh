# shellcheck shell=bash
# The many-clients section of bench/run.sh (issue 12's "16 clients pulling the warm image at once" row;
# sourced by it; part of the full run, and BENCH_ONLY=clients runs only this section, with the full image).
# BENCH_CLIENTS (default 16, at most 24; 0 skips the section) `skopeo copy docker://REF oci:DIR/cJ:x`
# started together by one shell in the client namespace, of the warm image:
#   direct   upstream.nvcr.test/bench/big:1 (the upstream docker-registry)
#   regcache nvcr.io/bench/big:1 (served from its cache)
#   nginx    nginx.rcbench.test:8443/bench/big:1 (proxy_cache in front of the upstream, bench/nginx.conf.in)
# each with --src-cert-dir holding the CA that path's server certificate chains to. Before timing, one
# copy through each path fills both caches. BENCH_CLIENT_RUNS (default 3, at most 9) interleaved runs
# (direct, regcache, nginx, ...). Aggregate MB/s = clients x image bytes / wall time (start of the first
# copy to the end of the last). Every copy must exit 0 and leave an OCI layout holding at least the image's
# blob bytes; through regcache and nginx the upstream must answer no blob GET during a timed run.
# Where the copies go: skopeo writes every blob it reads. By default into a tmpfs mounted for the run in
# the command's own mount namespace (gone when the run ends), sized clients x (image + 10 %), when
# MemAvailable leaves 4 GiB beside it; otherwise into a directory on disk under the work dir, removed
# after each run. BENCH_CLIENTS_DEST=tmpfs or disk forces one; the report says which was used.

CLIENTS=${BENCH_CLIENTS:-16}
[[ $CLIENTS =~ ^([0-9]|1[0-9]|2[0-4])$ ]] || die "BENCH_CLIENTS must be 0..24"
CLIENT_RUNS=${BENCH_CLIENT_RUNS:-3}
[[ $CLIENT_RUNS =~ ^[1-9]$ ]] || die "BENCH_CLIENT_RUNS must be 1..9"
CLIENTS_DEST=${BENCH_CLIENTS_DEST:-}
[[ -z $CLIENTS_DEST || $CLIENTS_DEST == tmpfs || $CLIENTS_DEST == disk ]] || die "BENCH_CLIENTS_DEST must be tmpfs or disk"

cl_ref() { # PATH: the image reference through that path
    case $1 in
    direct) echo "$DIRECT_HOST/$REPO_NAME:$TAG" ;;
    via) echo "$UP_HOST/$REPO_NAME:$TAG" ;;
    nginx) echo "$NGINX_HOST:$NGINX_PORT/$REPO_NAME:$TAG" ;;
    esac
}
cl_certs() { # PATH: a --src-cert-dir for it
    local d=$W/clients-certs/$1
    mkdir -p "$d"
    if [[ $1 == via ]]; then cp "$W/regcache-ca.crt" "$d/ca.crt"; else cp "$PKI/ca.crt" "$d/ca.crt"; fi
    echo "$d"
}
cl_blob_gets() { # upstream blob GETs so far (its log)
    grep -cE 'msg="response completed[^"]*" .*http\.request\.method=GET .*http\.request\.uri="?/v2/[^ ]*/blobs/' \
        "$LOGS/upstream.log" || true
}

# CL_SH N DEST-DIR TMPFS-MIB REF CERTS LOG-PREFIX (run in the client namespace): mounts a tmpfs of
# TMPFS-MIB on DEST-DIR unless it is 0, starts N skopeo copies at once, waits for all, writes each copy's
# blob bytes to LOG-PREFIX.J.bytes, prints "start end" (epoch seconds); exits 1 if any copy failed
# shellcheck disable=SC2016
CL_SH='n=$1 dest=$2 mib=$3 ref=$4 certs=$5 log=$6
if [ "$mib" != 0 ]; then mount -n -t tmpfs -o "size=${mib}m" rcbench-clients "$dest" || exit 1; fi
pids=""
t0=$(date +%s.%N)
j=1
while [ "$j" -le "$n" ]; do
    timeout 900 skopeo copy -q --src-cert-dir "$certs" "docker://$ref" "oci:$dest/c$j:x" >"$log.$j.log" 2>&1 &
    pids="$pids $!"
    j=$((j + 1))
done
rc=0
for p in $pids; do wait "$p" || rc=1; done
t1=$(date +%s.%N)
j=1
while [ "$j" -le "$n" ]; do
    du -sb "$dest/c$j/blobs" 2>/dev/null | cut -f1 >"$log.$j.bytes"
    j=$((j + 1))
done
echo "$t0 $t1"
exit "$rc"'

# cl_dest: sets CL_DIR and CL_MIB (0: a disk directory) for CLIENTS copies of the image
cl_dest() {
    local need avail
    need=$((CLIENTS * (IMAGE_BYTES >> 20) * 11 / 10 + 64))
    avail=$(awk '$1 == "MemAvailable:" { print int($2 / 1024) }' /proc/meminfo)
    CL_DIR=$W/clients-oci CL_MIB=$need
    case $CLIENTS_DEST in
    disk) CL_MIB=0 ;;
    tmpfs) ;;
    *) ((avail >= need + 4096)) || CL_MIB=0 ;;
    esac
    if ((CL_MIB > 0)); then
        CL_DEST_DESC="a tmpfs of $need MiB per run (MemAvailable $avail MiB)"
    else
        CL_DEST_DESC="a directory on disk under the work dir, removed after each run (MemAvailable $avail MiB, a tmpfs needs $need MiB + 4 GiB)"
    fi
}

cl_pid() { case $1 in direct) echo "$UP_PID" ;; via) echo "$REGCACHE_PID" ;; nginx) echo "$NGINX_PID" ;; esac; }
# cl_run PATH N LOG-PREFIX: N copies through PATH at once; prints "aggregate-MB/s wall-s upstream-blob-GETs
# server-CPU-s skopeo-CPU-s machine-busy-%" (server: the process tree serving PATH; skopeo: all N copies)
cl_run() {
    local path=$1 n=$2 log=$LOGS/$3 g0 g1 t0 t1 j bytes c0 c1 s0 s1 TIMEFORMAT='%U %S'
    rm -rf "$CL_DIR"
    mkdir -p "$CL_DIR"
    g0=$(cl_blob_gets) c0=$(tree_cpu_secs "$(cl_pid "$path")") s0=$(stat_cpu)
    # shellcheck disable=SC2016
    { time ip netns exec "$CLI_NS" sh -c "$HERMETIC_MOUNTS"' && exec "$@"' sh bash -c "$CL_SH" clients "$n" "$CL_DIR" \
        "$CL_MIB" "$(cl_ref "$path")" "$(cl_certs "$path")" "$log" >"$log.wall" 2>"$log.err"; } 2>"$log.time" \
        || die "$n skopeo copies through $path: $(cat "$log.err") (logs/${3}.*.log)"
    g1=$(cl_blob_gets) c1=$(tree_cpu_secs "$(cl_pid "$path")") s1=$(stat_cpu)
    rm -rf "$CL_DIR"
    for ((j = 1; j <= n; j++)); do
        bytes=$(<"$log.$j.bytes")
        ((${bytes:-0} >= IMAGE_BYTES)) || die "skopeo copy $j of $n through $path wrote ${bytes:-0} blob bytes (want >= $IMAGE_BYTES)"
    done
    read -r t0 t1 <"$log.wall"
    # shellcheck disable=SC2046
    echo "$(stats par "$n" "$IMAGE_BYTES" "$t0" "$t1" 0 0 0 "0 1" "0 1" | cut -d' ' -f1,5) $((g1 - g0))" \
        "$(stats elapsed "$c0" "$c1") $(stats sum $(<"$log.time")) $(stats busy "$s0" "$s1")"
}

declare -A CL_MBS=() CL_WALL=() CL_SCPU=() CL_CCPU=() CL_BUSY=()
clients_section() {
    local paths=(direct via) path r mbs wall gets scpu ccpu busy load0 load1 line
    ((CLIENTS > 0)) || return 0
    [[ $BENCH_NGINX == 1 ]] && paths+=(nginx)
    cl_dest
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    info "clients: $CLIENTS skopeo copies at once, $CLIENT_RUNS interleaved runs; into $CL_DEST_DESC"
    for path in "${paths[@]}"; do
        read -r mbs wall gets <<<"$(cl_run "$path" 1 "clients-warm-$path")"
        info "clients: warm-up copy through $path: $wall s, upstream blob GETs $gets"
    done
    for ((r = 1; r <= CLIENT_RUNS; r++)); do
        for path in "${paths[@]}"; do
            read -r mbs wall gets scpu ccpu busy <<<"$(cl_run "$path" "$CLIENTS" "clients-$path-$r")"
            [[ $path == direct || $gets == 0 ]] || die "clients: the upstream answered $gets blob GETs during the run through $path"
            CL_MBS[$path]+=" $mbs" CL_WALL[$path]+=" $wall" CL_SCPU[$path]+=" $scpu" CL_CCPU[$path]+=" $ccpu" CL_BUSY[$path]+=" $busy"
            info "clients run $r $path: $CLIENTS copies in $wall s, $mbs MB/s aggregate (upstream blob GETs $gets), server CPU $scpu s, skopeo CPU $ccpu s, machine busy $busy %"
        done
    done
    load1=$(cut -d' ' -f1-3 /proc/loadavg)
    say ""
    say "$CLIENTS skopeo clients pulling the warm image ($((IMAGE_BYTES >> 20)) MiB of blobs) at once, aggregate MB/s"
    say "  (clients x image bytes / wall time; median (min-max) of $CLIENT_RUNS interleaved runs; copies into $CL_DEST_DESC;"
    say "  load before $load0, after $load1)"
    for path in "${paths[@]}"; do
        # shellcheck disable=SC2086
        say "$(printf '  %-8s %-38s MB/s %-16s wall s %-20s server CPU s %-20s skopeo CPU s %-20s busy %% %s' \
            "$(path_label "$path")" "$(cl_ref "$path")" "$(stats msp ${CL_MBS[$path]})" "$(stats msp ${CL_WALL[$path]})" \
            "$(stats msp ${CL_SCPU[$path]})" "$(stats msp ${CL_CCPU[$path]})" "$(stats msp ${CL_BUSY[$path]})")"
    done
    # shellcheck disable=SC2086
    line="  $CLIENTS clients: regcache / direct = $(ratio "$(median ${CL_MBS[via]})" "$(median ${CL_MBS[direct]})")"
    # shellcheck disable=SC2086
    [[ $BENCH_NGINX == 1 ]] && line+="; regcache / nginx = $(ratio "$(median ${CL_MBS[via]})" "$(median ${CL_MBS[nginx]})") (target >= 1.3)"
    say "$line"
    [[ $BENCH_NGINX == 1 ]] || return 0
    # the CPUs are saturated by the clients: what regcache / nginx could reach if regcache cost nothing
    local sn cn
    # shellcheck disable=SC2086
    sn=$(median ${CL_SCPU[nginx]}) cn=$(median ${CL_CCPU[nginx]})
    say "  CPU ceiling: with nginx the skopeos used $cn core-s and nginx $sn per run; a server costing nothing would"
    say "  reach at most (skopeo + nginx) / skopeo = $(ratio "$(stats sum "$cn" "$sn")" "$cn") x nginx on these $(nproc) CPUs"
}
