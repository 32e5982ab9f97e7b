# shellcheck shell=bash
# The fleet section of bench/run.sh (sourced by it once the upstream registry is up; BENCH_ONLY=fleet
# runs only this section). Three appliances, each in its own namespace on a LAN namespace (a bridge,
# 10.80.0.0/24) that also holds a three-node Garage 2.5 cluster (scripts/lib/garage.sh,
# replication_factor 3) on 10.80.0.5; APP joins the LAN on 10.80.0.1 (the appliances' route to the
# upstream, and a dnsmasq forwarding their dns.upstream to the bench's resolver); the client namespace
# CLI joins it on 10.80.0.20 and still reaches the upstream directly over its own veth. One CA, copied.
#
#   warm: a FLEET_WARM_MIB (default 512) MiB blob, one curl stream, MB/s: direct from the upstream,
#     through appliance 1 which holds it on its disk (x-cache HIT), and through appliance 2 restarted
#     with an empty local cache, so it comes from the shared tier; BLOB_RUNS interleaved runs.
#   cold fleet fill: for N = 1, 2, 3 appliances (peers = the first N; N = 1 has no [fleet]), FLEET_CLIENTS
#     (default 4) curl clients on each start one cold FLEET_COLD_MIB (default 256) MiB blob at once
#     (a fresh blob each time); wall time from the first start to the last end, and the upstream's GETs
#     of the blob in its own log; ROUNDS rounds, N = 1, 2, 3 interleaved in each.
# Medians and their runs; ratios against the local tier, direct, and N = 1.

FL_LAN_NS=$NS_PREFIX-lan
FL_NS=("$NS_PREFIX-f1" "$NS_PREFIX-f2" "$NS_PREFIX-f3")
FL_GW=10.80.0.1 FL_S3_IP=10.80.0.5 FL_CLI_IP=10.80.0.20
FLEET_IPS=(10.80.0.11 10.80.0.12 10.80.0.13)
FL_WARM_MIB=${FLEET_WARM_MIB:-512}
FL_COLD_MIB=${FLEET_COLD_MIB:-256}
FL_CLIENTS=${FLEET_CLIENTS:-4}
[[ $FL_WARM_MIB =~ ^[1-9][0-9]{0,3}$ && $FL_COLD_MIB =~ ^[1-9][0-9]{0,3}$ ]] || die "FLEET_WARM_MIB, FLEET_COLD_MIB: 1..9999"
[[ $FL_CLIENTS =~ ^[1-8]$ ]] || die "FLEET_CLIENTS must be 1..8"
FL_PIDS=('' '' '')

fl_network() {
    remove_stale_ns "$FL_LAN_NS" "${FL_NS[@]}" >&2
    EXTRA_NS+=("$FL_LAN_NS" "${FL_NS[@]}")
    lan_up "$FL_LAN_NS" "$FL_S3_IP/24"
    lan_join "$FL_LAN_NS" "$APP_NS" "$NS_PREFIX-lan" "$FL_GW/24"
    lan_join "$FL_LAN_NS" "$CLI_NS" "$NS_PREFIX-lcl" "$FL_CLI_IP/24"
    local n
    for n in 1 2 3; do
        lan_node "$FL_LAN_NS" "${FL_NS[n - 1]}" "$NS_PREFIX-f$n" "${FLEET_IPS[n - 1]}/24" "$FL_GW" "$UP_IP/32"
    done
    bg fleet-dns-forwarder "$APP_NS" dnsmasq -k -C /dev/null --log-facility=- --user=root --pid-file="$W/fl-dnsmasq.pid" \
        --port 53 --listen-address="$FL_GW" --bind-interfaces --no-resolv --no-hosts --server="127.0.0.1#$DNSMASQ_PORT"
    wait_for "fleet dns forwarder" "$!" 50 0.1 ip netns exec "${FL_NS[0]}" dig +time=1 +tries=1 "@$FL_GW" "$UP_HOST" A
}

fl_config() { # N: $FW/fN/config.toml (peers: the first FLEET_SIZE appliances; none when FLEET_SIZE is 1)
    local n=$1 d=$FW/f$1
    mkdir -p "$d/state"
    {
        fleet_node_toml "$n" "$d" "$FL_GW:53" '"10.80.0.0/24", "127.0.0.0/8"' "${FLEET_IPS[n - 1]}"
        printf '[cache]\ndir = "%s"\nmax_size = "4GiB"\n' "$d/cache"
        fleet_toml "$n"
        printf '\n[[registry]]\nhost = "%s"\n' "$UP_HOST"
    } >"$d/config.toml"
}
fl_start() { # N
    local n=$1
    ip netns exec "${FL_NS[n - 1]}" "$BIN" serve --config "$FW/f$n/config.toml" >>"$LOGS/fleet-$n.access.log" \
        2>>"$LOGS/fleet-$n.log" </dev/null 9<&- &
    FL_PIDS[n - 1]=$!
    track_pid "$!" "fleet-$n"
    wait_for "fleet appliance $n" "$!" 150 0.2 grep -q 'listening for https on' "$LOGS/fleet-$n.log" \
        || die "fleet appliance $n did not start (logs/fleet-$n.log)"
}
fl_stop() { [[ -z ${FL_PIDS[$1 - 1]} ]] || stop_forget "${FL_PIDS[$1 - 1]}"; FL_PIDS[$1 - 1]=''; }
# fl_restart_empty N: appliance N stopped, its local cache removed, started again
fl_restart_empty() { fl_stop "$1"; rm -rf "$FW/f$1/cache"; fl_start "$1"; }
# fl_fleet N: appliances 1..N running with N peers, empty local caches; the others stopped
fl_fleet() {
    local n
    for n in 1 2 3; do fl_stop "$n"; rm -rf "$FW/f$n/cache"; done
    FLEET_SIZE=$1
    for ((n = 1; n <= $1; n++)); do fl_config "$n"; fl_start "$n"; done
}

fl_blob() { # MIB REPO: a random blob pushed to the upstream; prints its digest
    local f=$W/fl-blob.bin d
    head -c "$(($1 << 20))" /dev/urandom >"$f"
    d=sha256:$(sha256sum "$f" | cut -d' ' -f1)
    push_blob "$UP_HOST" "$2" "$f" "$d" >/dev/null || die "push of a $1 MiB blob"
    rm -f "$f"
    echo "$d"
}
fl_upstream_gets() { # DIGEST: GETs of it the upstream answered (its log)
    grep -cE "msg=\"response completed[^\"]*\" .*http\\.request\\.method=GET .*http\\.request\\.uri=\"?/v2/[^ ]*/blobs/$1" \
        "$LOGS/upstream.log" || true
}
fl_in_bucket() { # DIGEST: waits up to 60 s for it under the prefix
    local i
    for ((i = 0; i < 240; i++)); do
        garage_objects "$FLEET_PREFIX" 2>/dev/null | grep -qF "${1#sha256:}" && return 0
        sleep 0.25
    done
    die "$1 not in the bucket after 60 s"
}

# fl_get URL SIZE CA [CURL-ARGS...]: one GET; prints "MB/s x-cache"
fl_get() {
    local url=$1 size=$2 ca=$3 out code got speed xc; shift 3
    out=$(cli curl -sS --max-time 300 --cacert "$ca" "$@" -o /dev/null \
        -w '%{http_code} %{size_download} %{speed_download} x%header{x-cache}' "$url") || die "curl $url"
    read -r code got speed xc <<<"$out"
    [[ $code == 200 && $got == "$size" ]] || die "curl $url: HTTP $code, $got bytes (want 200, $size)"
    echo "$(awk -v s="$speed" 'BEGIN {printf "%.0f", s / 1e6}') ${xc#x}"
}

# ---------------------------------------------------------------------------------------------------

declare -A FLW=() FLC=() FLG=()
fl_warm() {
    local d size url i out
    d=$(fl_blob "$FL_WARM_MIB" bench/fleet-warm)
    size=$((FL_WARM_MIB << 20))
    url="https://$UP_HOST/v2/bench/fleet-warm/blobs/$d"
    out=$(fl_get "$url" "$size" "$FW/ca.crt" --resolve "$UP_HOST:443:${FLEET_IPS[0]}")
    info "fleet warm: first GET through appliance 1 (fill): x-cache ${out#* }"
    fl_in_bucket "$d"
    for ((i = 1; i <= BLOB_RUNS; i++)); do
        fl_restart_empty 2
        out=$(fl_get "https://$DIRECT_HOST/v2/bench/fleet-warm/blobs/$d" "$size" "$PKI/ca.crt" --resolve "$DIRECT_HOST:443:$UP_IP")
        FLW[direct]+=" ${out% *}"
        out=$(fl_get "$url" "$size" "$FW/ca.crt" --resolve "$UP_HOST:443:${FLEET_IPS[0]}")
        [[ ${out#* } == HIT ]] || die "appliance 1 answered x-cache ${out#* }, not HIT"
        FLW[local]+=" ${out% *}"
        out=$(fl_get "$url" "$size" "$FW/ca.crt" --resolve "$UP_HOST:443:${FLEET_IPS[1]}")
        FLW[shared]+=" ${out% *}"
        FLW_XC=${out#* }
        info "fleet warm run $i: direct${FLW[direct]##* }, local${FLW[local]##* }, shared tier${FLW[shared]##* } MB/s (x-cache $FLW_XC)"
    done
}

# FL_PAR_SH SIZE PER URL CA IP...: PER curls per IP at once (one shell); prints "t0 t1"; exit 1 if any
# did not get 200 and SIZE bytes
# shellcheck disable=SC2016
FL_PAR_SH='size=$1 per=$2 url=$3 ca=$4 host=$5; shift 5; pids=() outs=()
t0=$(date +%s.%N)
for ip in "$@"; do
    for ((i = 1; i <= per; i++)); do
        f=$(mktemp); outs+=("$f")
        curl -sS --max-time 300 --cacert "$ca" --resolve "$host:443:$ip" -o /dev/null -w "%{http_code} %{size_download}" "$url" >"$f" &
        pids+=("$!")
    done
done
for p in "${pids[@]}"; do wait "$p"; done
t1=$(date +%s.%N)
rc=0
for f in "${outs[@]}"; do [[ $(cat "$f") == "200 $size" ]] || { echo "a client got: $(cat "$f")" >&2; rc=1; }; rm -f "$f"; done
echo "$t0 $t1"
exit "$rc"'
fl_cold() { # ROUNDS rounds of N = 1, 2, 3
    local r n d ips t0 t1 gets i
    for ((r = 1; r <= ROUNDS; r++)); do
        for n in 1 2 3; do
            fl_fleet "$n"
            d=$(fl_blob "$FL_COLD_MIB" bench/fleet-cold)
            ips=("${FLEET_IPS[@]:0:n}")
            cli bash -c "$FL_PAR_SH" par "$((FL_COLD_MIB << 20))" "$FL_CLIENTS" "https://$UP_HOST/v2/bench/fleet-cold/blobs/$d" \
                "$FW/ca.crt" "$UP_HOST" "${ips[@]}" >"$W/fl-par.out" 2>>"$LOGS/fleet-cold.err" \
                || die "cold fleet fill N=$n: a client failed (logs/fleet-cold.err)"
            read -r t0 t1 <"$W/fl-par.out"
            for ((i = 0; i < 20; i++)); do [[ $(fl_upstream_gets "$d") -ge 1 ]] && break; sleep 0.25; done
            sleep 0.5
            gets=$(fl_upstream_gets "$d")
            FLC[$n]+=" $(stats elapsed "$t0" "$t1")" FLG[$n]+=" $gets"
            info "fleet cold round $r N=$n: $((n * FL_CLIENTS)) clients in ${FLC[$n]##* } s, $gets upstream GET(s)"
        done
    done
    for n in 1 2 3; do fl_stop "$n"; done
}

fl_report() {
    local n med1 med
    say ""
    say "fleet: 3 appliances on one LAN, Garage $("$(garage_bin)" --version 2>/dev/null | awk '{sub(/^cargo:/, "", $2); print $2}') (3 nodes, replication_factor 3) as the shared tier"
    say "binary: $BIN_DESC; $(nproc) CPUs; load average at the bench's start: $LOAD_START, now: $(cut -d' ' -f1-3 /proc/loadavg)"
    say "warm blob, $FL_WARM_MIB MiB over HTTPS, one curl stream, MB/s (median of $BLOB_RUNS; runs interleaved)"
    for k in direct local shared; do
        case $k in
        direct) name="direct from docker-registry" ;;
        local) name="appliance, local tier (x-cache HIT)" ;;
        shared) name="appliance, shared tier (x-cache $FLW_XC)" ;;
        esac
        # shellcheck disable=SC2086
        printf '  %-40s %6s  %s\n' "$name" "$(stats median ${FLW[$k]})" "${FLW[$k]# }"
    done
    # shellcheck disable=SC2086
    say "  shared / local = $(stats ratio "$(stats median ${FLW[shared]})" "$(stats median ${FLW[local]})"); shared / direct = $(stats ratio "$(stats median ${FLW[shared]})" "$(stats median ${FLW[direct]})"); local / direct = $(stats ratio "$(stats median ${FLW[local]})" "$(stats median ${FLW[direct]})")"
    say ""
    say "cold fleet fill: $FL_CLIENTS clients on each of N appliances start one cold $FL_COLD_MIB MiB blob at once"
    say "  (wall time from the first start to the last end, median of $ROUNDS; N = 1, 2, 3 interleaved)"
    printf '  %-3s %-8s %-18s %8s  %-7s %-10s %s\n' N clients "upstream GETs" "wall s" "/N=1" "aggr MB/s" runs
    # shellcheck disable=SC2086
    med1=$(stats median ${FLC[1]})
    for n in 1 2 3; do
        # shellcheck disable=SC2086
        med=$(stats median ${FLC[$n]})
        printf '  %-3s %-8s %-18s %8s  %-7s %-10s %s\n' "$n" "$((n * FL_CLIENTS))" "${FLG[$n]# }" "$med" "$(stats ratio "$med" "$med1")" \
            "$("$PY" -c "print(f'{$n * $FL_CLIENTS * $FL_COLD_MIB * 1048576 / $med / 1e6:.0f}')")" "${FLC[$n]# }"
    done
}

fleet_section() {
    garage_bin >/dev/null || { info "no garage (scripts/test.sh's install step builds /opt/garage/bin/garage): no fleet section"; return 0; }
    FW=$W/fleet
    mkdir -p "$FW"
    info "fleet: LAN, Garage (logs/garage-setup.log), 3 appliances"
    fl_network
    garage_up "$FL_LAN_NS" "$FL_S3_IP" "$FW/garage" regcache || { cat "$LOGS/garage-setup.log" >&2; die "garage"; }
    FLEET_SIZE=3
    local n
    for n in 1 2 3; do fl_config "$n"; done
    app "$BIN" ca cert --config "$FW/f1/config.toml" >"$FW/ca.crt"
    fleet_share_ca "$FW/f1/state" "$FW/f2/state" "$FW/f3/state"
    for n in 1 2 3; do fl_start "$n"; done
    fl_warm
    fl_cold
    fl_report
    garage_stop
}
