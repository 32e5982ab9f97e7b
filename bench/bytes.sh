#!/usr/bin/env bash
# CPU per byte on the warm path, A/B (issue 12; a private tool, not part of bench/run.sh).
#
#   sudo BYTES_A=/tmp/a/regcache BYTES_B=/tmp/b/regcache BYTES_RUNS=7 bash bench/bytes.sh
#
# One 512 MiB layer in an upstream registry; two regcache builds side by side in one namespace, A on
# 10.78.0.1:443 and B on 10.78.0.3:443, each with its own cache, both warm (x-cache HIT); optionally
# nginx (BYTES_NGINX=1, bench/nginx.conf.in). Then BYTES_RUNS interleaved rounds of one curl GET per
# server, for --http1.1 and --http2: per GET the server's user and system CPU seconds (from
# /proc/PID/stat; nginx: master and workers) and curl's (from /usr/bin/time), printed one line per
# GET and as medians with min..max (srv_ns: exact on-CPU seconds, schedstat of every thread).
# BYTES_HOLD=1 then waits (up to an hour) until $W/stop exists, for
# perf/strace against the printed PIDs. BENCH_NS names the namespaces (default rcbytes).
# BYTES_ENV_A and BYTES_ENV_B: VAR=VALUE words for each instance's environment.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LIB=$REPO/scripts/lib
ASSETS=$REPO/scripts/e2e
PY=${PYTHON:-/usr/bin/python3}
LIB_TAG=bytes # read by scripts/lib/proc.sh
export LIB_TAG
W='' LOGS=''
# shellcheck source=../scripts/lib/proc.sh
. "$LIB/proc.sh"
# shellcheck source=../scripts/lib/netns.sh
. "$LIB/netns.sh"
# shellcheck source=../scripts/lib/pki.sh
. "$LIB/pki.sh"
# shellcheck source=../scripts/lib/upstream.sh
. "$LIB/upstream.sh"
NS=${BENCH_NS:-rcbytes}
APP_NS=$NS-app CLI_NS=$NS-cli
APP_IP=10.78.0.1 B_IP=10.78.0.3 CLI_IP=10.78.0.2
UP_HOST=nvcr.io UP_IP=198.51.100.30 REPO_NAME=bench/big
NGINX_HOST=nginx.rcbench.test NGINX_PORT=8443
RUNS=${BYTES_RUNS:-7}
A=${BYTES_A:?BYTES_A: the before build} B=${BYTES_B:?BYTES_B: the after build}
info() { say "bytes: $*" >&2; }
die() { say "bytes: failed: $*" >&2; exit 1; }
app() { ip netns exec "$APP_NS" "$@"; }
cli() { ip netns exec "$CLI_NS" "$@"; }
keep() { [[ $1 != 0 ]]; }
trap 'on_exit keep "$CLI_NS" "$APP_NS"' EXIT
remove_stale_ns "$APP_NS" "$CLI_NS" >&2
W=$(mktemp -d /tmp/rcbench.bytes.XXXXXX) LOGS=$W/logs PKI=$W/pki
mkdir -p "$LOGS" "$PKI"
{ pki_ca "$PKI" "bytes $$"; pki_leaf "$PKI" up "$UP_HOST"; pki_leaf "$PKI" nginx "$NGINX_HOST"; } >"$LOGS/pki.log" 2>&1
netns_pair "$APP_NS" "$APP_IP" "$CLI_NS" "$CLI_IP"
ip -n "$APP_NS" addr add "$B_IP/24" dev "$APP_NS"
ip -n "$APP_NS" addr add "$UP_IP/32" dev lo
echo "nameserver 127.0.0.9" >"/etc/netns/$APP_NS/resolv.conf"
start_dnsmasq "$APP_NS" 5353 --host-record="$UP_HOST,$UP_IP"
UP=$W/upstream
registry_config "$ASSETS/registry-plain.yml.in" "$UP" "$UP_IP:443" up
bg upstream "$APP_NS" docker-registry serve "$UP/config.yml"
app_curl() { app curl -sS --max-time 120 --cacert "$PKI/ca.crt" --resolve "$UP_HOST:443:$UP_IP" "$@"; }
wait_for upstream "$!" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$UP_HOST/v2/" || die upstream
"$PY" "$ASSETS/gen_image.py" "$W/image" --name "$UP_HOST/$REPO_NAME" --tag 1 --format docker --layer-mib 512 >/dev/null
BLOB=$(awk '$1 == "blob" { print $2 }' "$W/image/push-plan" | while read -r d; do
    echo "$(stat -c %s "$W/image/blobs/sha256/${d#sha256:}") $d"; done | sort -n | tail -1 | cut -d' ' -f2)
SIZE=$(stat -c %s "$W/image/blobs/sha256/${BLOB#sha256:}")
push_layout "$UP_HOST" "$REPO_NAME" "$W/image" >"$LOGS/push.log" 2>&1 || die push
rm -rf "$W/image"

declare -A PID=() IP=([A]=$APP_IP [B]=$B_IP) BIN=([A]=$A [B]=$B)
for s in A B; do
    d=$W/rc$s
    mkdir -p "$d/state"
    render "$HERE/regcache.toml.in" "$d/config.toml" STATE_DIR="$d/state" CACHE_DIR="$d/cache" APP_IP="${IP[$s]}" \
        CLI_IP="$CLI_IP" DNSMASQ_PORT=5353 PUBLIC_CA="$PKI/ca.crt" ADMIN_PORT="$([[ $s == A ]] && echo 9090 || echo 9091)"
    app "${BIN[$s]}" ca cert --config "$d/config.toml" >"$d/ca.crt"
    env_s=BYTES_ENV_$s
    bg "rc$s" "$APP_NS" env ${!env_s:-} "${BIN[$s]}" serve --config "$d/config.toml"
    PID[$s]=$!
    wait_for "regcache $s" "${PID[$s]}" 150 0.2 grep -q 'listening for https on' "$LOGS/rc$s.log" || die "regcache $s"
done
SERVERS=(A B)
if [[ ${BYTES_NGINX:-0} == 1 ]]; then
    NG=$W/nginx
    mkdir -p "$NG/tmp" "$NG/cache"
    render "$HERE/nginx.conf.in" "$NG/nginx.conf" DIR="$NG" UP_IP="$UP_IP" UP_NAME="$UP_HOST" \
        LISTEN="$APP_IP:$NGINX_PORT" NAME="$NGINX_HOST" CERT="$PKI/nginx.crt" KEY="$PKI/nginx.key" CA="$PKI/ca.crt"
    bg nginx "$APP_NS" nginx -p "$NG/" -e "$NG/error.log" -c "$NG/nginx.conf"
    sleep 1
    PID[N]=$(cat "$NG/nginx.pid")
    SERVERS+=(N)
fi
target() { # SERVER: sets T to curl's --cacert, --resolve and URL for SERVER
    case $1 in
    N) T=(--cacert "$PKI/ca.crt" --resolve "$NGINX_HOST:$NGINX_PORT:$APP_IP"
        "https://$NGINX_HOST:$NGINX_PORT/v2/$REPO_NAME/blobs/$BLOB") ;;
    *) T=(--cacert "$W/rc$1/ca.crt" --resolve "$UP_HOST:443:${IP[$1]}" "https://$UP_HOST/v2/$REPO_NAME/blobs/$BLOB") ;;
    esac
}
get() { # SERVER PROTO OUT-ARGS...
    local s=$1 p=$2 T
    shift 2
    target "$s"
    cli curl -sS --max-time 300 "--$p" "$@" "${T[@]}"
}
for s in "${SERVERS[@]}"; do
    for _ in 1 2 3; do
        out=$(get "$s" http1.1 -o /dev/null -w '%{http_code} %{size_download} %header{x-cache}%header{x-cache-status}')
        [[ $out == "200 $SIZE HIT" ]] && break
    done
    [[ $out == "200 $SIZE HIT" ]] || die "$s not warm: $out"
done
info "warm: A pid ${PID[A]}, B pid ${PID[B]}${PID[N]:+, nginx master ${PID[N]}}; work dir $W"

ut() { # PID: "user system" clock ticks and exact on-CPU ns (schedstat, every thread) of PID and its children
    local p u=0 k=0 n=0 a b
    for p in "$1" $(pgrep -P "$1" || true); do
        read -r a b < <(awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$p/stat")
        u=$((u + a)) k=$((k + b))
        n=$((n + $(cat /proc/"$p"/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f", s }')))
    done
    echo "$u $k $n"
}
HZ=$(getconf CLK_TCK)
for p in http1.1 http2; do
    for ((r = 1; r <= RUNS; r++)); do
        for s in "${SERVERS[@]}"; do
            read -r u0 k0 n0 < <(ut "${PID[$s]}")
            target "$s"
            ct=$({ /usr/bin/time -f 'CT %U %S %e' ip netns exec "$CLI_NS" curl -sS --max-time 300 "--$p" "${T[@]}" \
                -o /dev/null -w 'GOT %{http_code} %{size_download}\n'; } 2>&1)
            read -r u1 k1 n1 < <(ut "${PID[$s]}")
            [[ $ct == *"GOT 200 $SIZE"* ]] || die "$s $p: $ct"
            read -r _ cu ck ce <<<"$(grep '^CT' <<<"$ct")"
            echo "$p $s $(awk -v a="$u0" -v b="$u1" -v c="$k0" -v d="$k1" -v hz="$HZ" -v e="$n0" -v f="$n1" \
                'BEGIN { printf "srv_user %.2f srv_sys %.2f srv_ns %.4f", (b - a) / hz, (d - c) / hz, (f - e) / 1e9 }') cli_user $cu cli_sys $ck wall $ce"
        done
    done
done | tee "$W/runs"
"$PY" - "$W/runs" "$SIZE" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
gb = int(sys.argv[2]) / 1e9
keys = ["srv_ns", "srv_user", "srv_sys", "cli_user", "cli_sys", "wall"]
for p in sorted({r[0] for r in rows}):
    for s in sorted({r[1] for r in rows}):
        got = [dict(zip(r[2::2], map(float, r[3::2]))) for r in rows if r[0] == p and r[1] == s]
        got = [dict(g, srv=g["srv_user"] + g["srv_sys"]) for g in got]
        out = []
        for k in keys + ["srv"]:
            v = [g[k] for g in got]
            out.append(f"{k} {st.median(v):.3f} ({min(v):.2f}..{max(v):.2f})")
        m = st.median([g["srv_ns"] for g in got])
        print(f"{p} {s}: " + ", ".join(out) + f"; server core-s/GB {m / gb:.3f}, user {st.median([g['srv_user'] for g in got]) / gb:.3f}")
EOF
if [[ ${BYTES_HOLD:-0} == 1 ]]; then
    info "holding until $W/stop exists (A ${PID[A]}, B ${PID[B]})"
    echo "${PID[A]} ${PID[B]} $BLOB $W" >/tmp/bytes-hold
    for ((i = 0; i < 3600; i++)); do [[ -e $W/stop ]] && break; sleep 1; done
fi
