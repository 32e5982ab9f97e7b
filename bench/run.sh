#!/usr/bin/env bash
# regcache benchmark (not a test: it prints figures, it asserts nothing about them).
#
#   sudo bash bench/run.sh                    # cargo build --release unless REGCACHE_BIN is set
#   REGCACHE_BIN=target/release/regcache BENCH_ROUNDS=3 BENCH_DOCKERD=1 sudo -E bash bench/run.sh
#
# Measures, in one run so the figures can be compared as ratios:
#   1. pull of a ~656 MiB image (3 layers of random bytes: 16, 128 and 512 MiB, gzip'd; generated
#      locally) by skopeo (copy to a fresh oci dir on a tmpfs) and, with BENCH_DOCKERD=1, by dockerd:
#      straight from the upstream registry, through regcache with an empty cache (cold), and through
#      regcache again (warm). BENCH_ROUNDS rounds of direct, cold, warm; medians printed.
#   2. the warm 512 MiB layer over HTTPS with curl (-o /dev/null, %{speed_download}): straight from the
#      upstream `docker-registry`, through regcache (served from its cache) and, unless BENCH_NGINX=0,
#      through nginx proxy_cache in front of the same upstream (bench/nginx.conf.in: TLS both ways,
#      sendfile, 1 MiB output buffers, keepalive upstream pool, cache lock, cache on disk; served from
#      its cache), interleaved, BENCH_BLOB_RUNS runs each, HTTP/1.1 and HTTP/2; medians and the ratios, plus the CPU time the serving process
#      (nginx: master and workers) and curl used per run. Per protocol also a "client ceiling" line: for
#      each path, blob size / median curl CPU seconds (what curl alone would allow on these CPUs) and the
#      measured median as a percentage of it; and a "server capacity" line: blob size / median server
#      CPU seconds, what one core of each server moves when the clients run elsewhere. Then the CPU per
#      GB table (issue 12's row): per server and protocol, user, system and user + system core-s/GB of
#      every server process (nginx: master and all descendants), the machine-accounted figure (both
#      CPUs' busy time during the GET minus curl's), curl's, and the ratios to nginx (bench/blob.sh says
#      why both figures are printed; BENCH_PIN=split|same pins servers and curl to CPUs).
#   3. unless BENCH_STREAMS=0, the same warm layer fetched by BENCH_STREAMS concurrent
#      `curl --http1.1 -o /dev/null` GETs started together (one shell in the client namespace starts them
#      all): aggregate MB/s = streams x size / wall time from the start of the first to the end of the
#      last; direct, regcache, nginx interleaved, BENCH_BLOB_RUNS runs each; medians and the ratios, plus
#      server CPU and curl CPU per GET (delta / streams), server capacity and machine busy %. Every
#      stream must answer 200 with the full size, and through regcache x-cache: HIT, through nginx
#      x-cache-status: HIT.
#
#   3b. unless BENCH_CLIENTS=0, many clients (bench/clients.sh): BENCH_CLIENTS (default 16) skopeo copies of
#      the warm image started together, direct, through regcache and through nginx (which then serves the
#      registry API: manifests keyed by URI and Accept), interleaved BENCH_CLIENT_RUNS (default 3) runs;
#      aggregate MB/s = clients x image bytes / wall time, medians with their range, ratios.
#   5. unless BENCH_FLEET=0, the fleet (bench/fleet.sh; needs Garage, /opt/garage/bin/garage, else skipped):
#      three appliances sharing a three-node Garage bucket; a warm blob from the shared tier vs the local
#      disk vs direct, and the cold fleet fill (upstream GETs, wall time) for N = 1, 2, 3 appliances.
#
#   0. DNS (bench/dns.sh): dnsperf against regcache and against dnsmasq in the same namespace, for the
#      intercepted name and for a forwarded one, interleaved runs; medians, ranges, p99, ratios and the
#      load average before and after. Skipped when dnsperf is not installed (apt-get install dnsperf).
#   4. small requests (bench/small.sh): the manifest by digest, warm, through regcache and through nginx,
#      HEAD with hey and GET with wrk, 32 connections, TLS, interleaved runs; medians with every run, p99,
#      server CPU per request, ratios and the load average before and after (needs hey, wrk and nginx:
#      apt-get install hey wrk nginx-light). BENCH_CALLGRIND=N also counts regcache's instructions per
#      request under valgrind (apt-get install valgrind).
#   6. unless BENCH_MEMORY=0, memory (bench/memory.sh; right after the pulls, on a restarted regcache
#      and a fresh nginx): RSS and PSS of regcache and of nginx (master + workers) sampled every 0.2 s
#      while idle, with 1,000 idle TLS connections, with those and 8 concurrent GETs of a warm 512 MiB
#      layer, and with the GETs alone; interleaved runs.
# Every section prints its elapsed time and the load average before and after it when it ends, and the
# report ends with a table of them. Order of the full run: DNS, pulls, memory, blob, streams, small,
# clients, fleet. A full run with the defaults took 20 min on the 2-vCPU machine (2026-11-30, shared:
# DNS 232 s, pulls 90, memory 114, blob 28, streams 32, small 218, clients 310 (16 x 3 x 3 copies), fleet 151).
#
# Built on scripts/lib (processes, namespaces, PKI, upstreams, stats.py), shared with scripts/e2e.sh.
# World (its own namespace names and addresses, so it never collides with scripts/e2e.sh):
#   namespace rcbench-app 10.78.0.1/24: regcache (dns :53, https :443), dnsmasq 127.0.0.1:5353, nginx
#             (https 10.78.0.1:8443, certificate for nginx.rcbench.test from the per-run public CA; the
#             client passes the name with curl --resolve), and the
#             upstream CNCF distribution for nvcr.io on 198.51.100.30 (a /32 on its loopback), TLS with a
#             per-run public CA; its certificate also names upstream.nvcr.test, a name regcache does not
#             intercept (its DNS forwards it to dnsmasq), so that clients can reach the upstream directly.
#   namespace rcbench-cli 10.78.0.2/24: skopeo, dockerd, curl; resolver regcache; a /32 route to
#             198.51.100.30 via the appliance namespace, so direct and proxied traffic cross the same veth.
# The fleet section adds its own LAN namespace and three appliance namespaces (bench/fleet.sh); its disk
# peak with the defaults is about 13 GB (each of the 9 cold blobs in the upstream and three times in Garage).
# Both veth ends live in these namespaces; no traffic leaves them. Disk: ~0.7 GB upstream storage,
# ~0.7 GB regcache cache, dockerd's vfs store up to ~1.4 GB during a pull; the work dir is removed at
# the end (BENCH_KEEP=1 keeps it).
#
# Environment: REGCACHE_BIN, BENCH_ROUNDS (default 3, at most 5), BENCH_BLOB_RUNS (default 3, at most 9;
# used by sections 2 and 3), BENCH_STREAMS (default 4; 2..8 parallel streams in section 3, 0 skips it),
# BENCH_DOCKERD (default 1), BENCH_NGINX (default 1; needs Debian's nginx or nginx-light, whose packaged
# service is never used: the bench starts its own nginx in its namespace and stops it by PID),
# BENCH_ONLY=dns (only the DNS section: no image, no upstream registry), BENCH_ONLY=small (only the
# small-request section, with a one-layer 1 MiB image), BENCH_SMALL_RUNS (default 5), BENCH_SMALL_SECS
# (default 10), BENCH_CALLGRIND (requests per method under callgrind, BENCH_ONLY=small), BENCH_ONLY=fleet
# (only the fleet section: no image; FLEET_WARM_MIB, FLEET_COLD_MIB, FLEET_CLIENTS, see bench/fleet.sh),
# BENCH_ONLY=pull (only the image pulls of section 1, with their CPU, busy % and upstream requests per pull
# and a cold curl GET of the largest layer per round; bench/pull.sh; BENCH_BIN_B=PATH interleaves a second
# build, BENCH_PERF=DIR records regcache under perf during the cold pulls),
# BENCH_ONLY=memory (only the memory section, bench/memory.sh: a one-layer 512 MiB image; BENCH_MEM_RUNS,
# default 3, BENCH_MEM_RATE, default 100M), BENCH_MEMORY (default 1), BENCH_ONLY=blob (only sections 2
# and 3, a one-layer 512 MiB image; BENCH_PIN), BENCH_ONLY=clients (only the many-clients section;
# BENCH_CLIENTS, BENCH_CLIENT_RUNS, BENCH_CLIENTS_DEST=tmpfs|disk), BENCH_FLEET (default 1), BENCH_DNS_RUNS (default 5),
# BENCH_DNS_SECS (default 10), BENCH_KEEP=1, BENCH_WORKDIR (parent of the work dir, default /tmp),
# BENCH_NS (namespace prefix, default rcbench), PYTHON (default /usr/bin/python3). Run it on an otherwise idle machine: it prints the load average.
set -Eeuo pipefail
shopt -u patsub_replacement 2>/dev/null || true

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LIB=$REPO/scripts/lib
ASSETS=$REPO/scripts/e2e
PY=${PYTHON:-/usr/bin/python3}
LIB_TAG=bench
W='' LOGS='' OK=0
# shellcheck source=../scripts/lib/proc.sh
. "$LIB/proc.sh"
# shellcheck source=../scripts/lib/netns.sh
. "$LIB/netns.sh"
# shellcheck source=../scripts/lib/pki.sh
. "$LIB/pki.sh"
# shellcheck source=../scripts/lib/upstream.sh
. "$LIB/upstream.sh"
# shellcheck source=../scripts/lib/garage.sh
. "$LIB/garage.sh"
# shellcheck source=../scripts/lib/fleet.sh
. "$LIB/fleet.sh"
hermetic_mounts rcbench

# BENCH_NS (default rcbench): the namespaces' prefix, so that two worktrees' benches do not tear
# down each other's namespaces (the lock below is per script file).
NS_PREFIX=${BENCH_NS:-rcbench}
[[ $NS_PREFIX =~ ^[a-z][a-z0-9-]{0,8}$ ]] || { echo "BENCH_NS must be 1-9 of [a-z0-9-]" >&2; exit 2; }
APP_NS=$NS_PREFIX-app
CLI_NS=$NS_PREFIX-cli
APP_IP=10.78.0.1
CLI_IP=10.78.0.2
DNSMASQ_PORT=5353
ADMIN_PORT=9090
UP_HOST=nvcr.io
UP_IP=198.51.100.30
DIRECT_HOST=upstream.nvcr.test
NGINX_HOST=nginx.rcbench.test
NGINX_PORT=8443
REPO_NAME=bench/big
TAG=1
LAYERS_MIB=(16 128 512)
ROUNDS=${BENCH_ROUNDS:-3}
BLOB_RUNS=${BENCH_BLOB_RUNS:-3}
[[ $ROUNDS =~ ^[1-5]$ ]] || { echo "BENCH_ROUNDS must be 1..5" >&2; exit 2; }
[[ $BLOB_RUNS =~ ^[1-9]$ ]] || { echo "BENCH_BLOB_RUNS must be 1..9" >&2; exit 2; }
STREAMS=${BENCH_STREAMS:-4}
[[ $STREAMS =~ ^[02-8]$ ]] || { echo "BENCH_STREAMS must be 0 (skip) or 2..8" >&2; exit 2; }

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY \
    SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE REGISTRY_AUTH_FILE DOCKER_HOST || true

info() { say "bench: $*" >&2; }
die() { say "bench: failed: $*" >&2; exit 1; }
stats() { "$PY" "$LIB/stats.py" "$@"; }

# section_begin NAME / section_end NAME: the load average before and after a section (1, 5, 15 min, and
# the tasks runnable at that moment: the averages lag, e.g. after the 16 skopeo clients) and its elapsed
# time, printed when it ends and again in the table sections_report prints at the end
SECTION_T0=0 SECTION_LOAD0='' SECTION_LINES=()
loadavg() { awk '{ print $1, $2, $3, "(" $4 - 1 ")" }' /proc/loadavg; } # minus the awk itself
section_begin() {
    SECTION_T0=$SECONDS SECTION_LOAD0=$(loadavg)
    info "section $1: starts, load average $SECTION_LOAD0"
}
section_end() {
    local line
    line=$(printf '  %-8s %5d s   load average before %-20s after %s' "$1" $((SECONDS - SECTION_T0)) "$SECTION_LOAD0" \
        "$(loadavg)")
    SECTION_LINES+=("$line")
    say "section ${line#  }"
}
sections_report() {
    say ""
    say "sections (elapsed; load average 1/5/15 min and (runnable tasks at that moment), before and after;"
    say "  the bench alone keeps the 1-min figure near 1-2, except right after the clients section's 16 skopeos)"
    printf '%s\n' "${SECTION_LINES[@]}"
    say "  total    $((SECONDS - T0)) s"
}

app() { ip netns exec "$APP_NS" "$@"; }
cli() { ip netns exec "$CLI_NS" "$@"; }

keep_workdir() { [[ ${BENCH_KEEP:-0} == 1 || $OK != 1 ]]; } # RC: for on_exit

# ---------------------------------------------------------------------------------------------------
# preflight, build

[[ $(id -u) == 0 ]] || die "must run as root"
BENCH_ONLY=${BENCH_ONLY:-}
[[ -z $BENCH_ONLY || $BENCH_ONLY =~ ^(dns|small|fleet|memory|blob|clients|pull)$ ]] ||
    die "BENCH_ONLY must be empty, dns, small, fleet, memory, blob, clients or pull"
[[ $BENCH_ONLY == small ]] && LAYERS_MIB=(1)
[[ $BENCH_ONLY == memory || $BENCH_ONLY == blob ]] && LAYERS_MIB=(512)
tools=(ip dig curl openssl dnsmasq flock sha256sum pgrep "$PY")
case $BENCH_ONLY in
dns) tools+=(dnsperf) ;;
small) tools+=(hey wrk docker-registry) ;;
memory | blob) tools+=(docker-registry) ;;
*) tools+=(skopeo docker-registry) ;;
esac
[[ -n ${BENCH_CALLGRIND:-} ]] && tools+=(valgrind callgrind_control)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
BENCH_DNS=1
[[ -z $BENCH_ONLY || $BENCH_ONLY == dns ]] || BENCH_DNS=0
command -v dnsperf >/dev/null || { info "no dnsperf (apt-get install dnsperf): no DNS section"; BENCH_DNS=0; }
BENCH_DOCKERD=${BENCH_DOCKERD:-1}
if [[ $BENCH_DOCKERD == 1 ]] && ! command -v dockerd >/dev/null; then info "no dockerd: skopeo only"; BENCH_DOCKERD=0; fi
BENCH_NGINX=${BENCH_NGINX:-1}
NGINX_BIN=$(command -v nginx || true)
[[ -z $NGINX_BIN && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
if [[ $BENCH_NGINX == 1 && -z $NGINX_BIN ]]; then
    info "no nginx (apt-get install nginx-light): no nginx contestant"; BENCH_NGINX=0
fi
single_run "${BASH_SOURCE[0]}"
EXTRA_NS=()   # the fleet section's namespaces
trap 'on_exit keep_workdir "$CLI_NS" "$APP_NS" "${EXTRA_NS[@]}"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap '[[ $- == *e* && $BASHPID == "$$" ]] && say "bench: error at line $LINENO: $BASH_COMMAND" >&2' ERR

remove_stale_ns "$APP_NS" "$CLI_NS" >&2
W=$(mktemp -d "${BENCH_WORKDIR:-/tmp}/rcbench.XXXXXX")
chmod 755 "$W"
LOGS=$W/logs PKI=$W/pki
mkdir -p "$LOGS" "$PKI" "$W/home/.docker" "$W/oci"
echo '{}' >"$W/home/.docker/config.json"
info "work dir $W"
T0=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

if [[ -n ${REGCACHE_BIN:-} ]]; then
    BIN=$REGCACHE_BIN
else
    info "cargo build --release (log: logs/cargo-build.log)"
    (cd "$REPO" && timeout 1200 cargo build --release) >"$LOGS/cargo-build.log" 2>&1 \
        || { tail -n 15 "$LOGS/cargo-build.log" >&2; die "cargo build --release"; }
    BIN=$REPO/target/release/regcache
fi
[[ -x $BIN ]] || die "no executable at $BIN"
if [[ -n ${REGCACHE_BIN:-} ]]; then
    BIN_DESC="$BIN (REGCACHE_BIN)"
else
    BIN_DESC="$BIN (release build of $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$REPO" &&
        git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes in src'))"
fi
export HOME=$W/home DOCKER_CONFIG=$W/home/.docker

# ---------------------------------------------------------------------------------------------------
# PKI, namespaces, upstream resolver and registry

{
    pki_ca "$PKI" "regcache bench public root $$"
    pki_leaf "$PKI" up "$UP_HOST" "$DIRECT_HOST"
    pki_leaf "$PKI" nginx "$NGINX_HOST"
} >"$LOGS/pki.log" 2>&1

netns_pair "$APP_NS" "$APP_IP" "$CLI_NS" "$CLI_IP"
ip -n "$APP_NS" addr add "$UP_IP/32" dev lo
# the upstream address is local to APP: no forwarding is needed to reach it over the veth
ip -n "$CLI_NS" route add "$UP_IP/32" via "$APP_IP"
echo "nameserver 127.0.0.9" >"/etc/netns/$APP_NS/resolv.conf"
echo "nameserver $APP_IP" >"/etc/netns/$CLI_NS/resolv.conf"

start_dnsmasq "$APP_NS" "$DNSMASQ_PORT" --host-record="$UP_HOST,$UP_IP" --host-record="$DIRECT_HOST,$UP_IP" \
    --host-record="$NGINX_HOST,$APP_IP" \
    || die "dnsmasq (logs/dnsmasq.log)"
# shellcheck source=dns.sh
. "$HERE/dns.sh"
UP=$W/upstream
if [[ $BENCH_ONLY != dns ]]; then
registry_config "$ASSETS/registry-plain.yml.in" "$UP" "$UP_IP:443" up
bg upstream "$APP_NS" docker-registry serve "$UP/config.yml"
UP_PID=$!
app_curl() { app curl -sS --max-time 120 --cacert "$PKI/ca.crt" --resolve "$UP_HOST:443:$UP_IP" "$@"; }
wait_for upstream "$UP_PID" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$UP_HOST/v2/" || die "upstream registry"
# shellcheck source=fleet.sh
. "$HERE/fleet.sh"
if [[ $BENCH_ONLY == fleet ]]; then
    section_begin fleet; fleet_section; section_end fleet
    sections_report
    OK=1
    exit 0
fi

# ---------------------------------------------------------------------------------------------------
# the image: generated locally, pushed through the registry API, then the local copy removed

info "generating the image (${LAYERS_MIB[*]} MiB layers of random bytes; ~20 s)"
gen_args=()
for m in "${LAYERS_MIB[@]}"; do gen_args+=(--layer-mib "$m"); done
IMAGE_DIGEST=$("$PY" "$ASSETS/gen_image.py" "$W/image" --name "$UP_HOST/$REPO_NAME" --tag "$TAG" --format docker "${gen_args[@]}")
BIG_BLOB='' BIG_SIZE=0 IMAGE_BYTES=0
while read -r kind a _; do
    [[ $kind == blob ]] || continue
    s=$(stat -c %s "$W/image/blobs/sha256/${a#sha256:}")
    IMAGE_BYTES=$((IMAGE_BYTES + s))
    if ((s > BIG_SIZE)); then BIG_SIZE=$s BIG_BLOB=$a; fi
done <"$W/image/push-plan"
push_layout "$UP_HOST" "$REPO_NAME" "$W/image" >"$LOGS/push.log" 2>&1 || die "push (logs/push.log)"
rm -rf "$W/image"
info "image $UP_HOST/$REPO_NAME:$TAG $IMAGE_DIGEST pushed: $((IMAGE_BYTES >> 20)) MiB of blobs, largest $BIG_BLOB ($((BIG_SIZE >> 20)) MiB); $((SECONDS - T0)) s"
fi

# ---------------------------------------------------------------------------------------------------
# regcache

RC=$W/regcache
mkdir -p "$RC/state"
render "$HERE/regcache.toml.in" "$RC/config.toml" STATE_DIR="$RC/state" CACHE_DIR="$RC/cache" APP_IP="$APP_IP" \
    CLI_IP="$CLI_IP" DNSMASQ_PORT="$DNSMASQ_PORT" PUBLIC_CA="$PKI/ca.crt" ADMIN_PORT="$ADMIN_PORT"
app "$BIN" ca cert --config "$RC/config.toml" >"$W/regcache-ca.crt"
REGCACHE_PID='' NSTART=0 REGCACHE_WRAP=() REGCACHE_WAIT=150
start_regcache() {
    NSTART=$((NSTART + 1))
    ip netns exec "$APP_NS" "${REGCACHE_WRAP[@]}" "$BIN" serve --config "$RC/config.toml" >>"$LOGS/regcache.access.log" \
        2>"$LOGS/regcache.$NSTART.log" </dev/null 9<&- &
    REGCACHE_PID=$!
    track_pid "$REGCACHE_PID" "regcache.$NSTART"
    wait_for regcache "$REGCACHE_PID" "$REGCACHE_WAIT" 0.2 grep -q 'listening for https on' "$LOGS/regcache.$NSTART.log" \
        || die "regcache did not start (logs/regcache.$NSTART.log)"
}
stop_regcache() { stop_forget "$REGCACHE_PID"; REGCACHE_PID=''; }
empty_cache() { # restart regcache with an empty cache (its CA, in state/, stays)
    stop_regcache
    rm -rf "$RC/cache"
    start_regcache
}
start_regcache

# nginx proxy_cache in front of the same upstream, in the appliance namespace; stopped by PID (cleanup)
NGINX_PID=''
start_nginx() {
    NG=$W/nginx
    mkdir -p "$NG/tmp" "$NG/cache"
    render "$HERE/nginx.conf.in" "$NG/nginx.conf" DIR="$NG" UP_IP="$UP_IP" UP_NAME="$DIRECT_HOST" \
        LISTEN="$APP_IP:$NGINX_PORT" NAME="$NGINX_HOST" CERT="$PKI/nginx.crt" KEY="$PKI/nginx.key" CA="$PKI/ca.crt"
    app "$NGINX_BIN" -t -p "$NG/" -e "$NG/error.log" -c "$NG/nginx.conf" >"$LOGS/nginx-t.log" 2>&1 \
        || { cat "$LOGS/nginx-t.log" >&2; die "nginx -t"; }
    bg nginx "$APP_NS" "$NGINX_BIN" -p "$NG/" -e "$NG/error.log" -c "$NG/nginx.conf"
    NGINX_PID=$!
    nginx_v2() { cli curl -sS --max-time 2 --cacert "$PKI/ca.crt" --resolve "$NGINX_HOST:$NGINX_PORT:$APP_IP" \
        "https://$NGINX_HOST:$NGINX_PORT/v2/" "$@"; }
    wait_for nginx "$NGINX_PID" 100 0.1 http_code_in 200 nginx_v2 || die "nginx (logs/nginx.log, nginx/error.log)"
}

# ---------------------------------------------------------------------------------------------------
# 0. DNS

if [[ $BENCH_DNS == 1 ]]; then section_begin dns; dns_section; section_end dns; fi
if [[ $BENCH_ONLY == dns ]]; then
    sections_report
    OK=1
    exit 0
fi
# shellcheck source=small.sh
. "$HERE/small.sh"
if [[ $BENCH_ONLY == small ]]; then
    [[ $BENCH_NGINX == 1 ]] || die "BENCH_ONLY=small needs nginx (apt-get install nginx-light)"
    start_nginx
    section_begin small; small_section; section_end small
    stop_forget "$NGINX_PID"
    [[ -n ${BENCH_CALLGRIND:-} ]] && small_callgrind "$BENCH_CALLGRIND"
    sections_report
    OK=1
    exit 0
fi
# shellcheck source=memory.sh
. "$HERE/memory.sh"
if [[ $BENCH_ONLY == memory ]]; then
    [[ $BENCH_NGINX == 1 ]] || die "BENCH_ONLY=memory needs nginx (apt-get install nginx-light)"
    start_nginx
    section_begin memory; memory_section; section_end memory
    stop_forget "$NGINX_PID"
    sections_report
    OK=1
    exit 0
fi

# client trust: regcache's CA for nvcr.io, the public CA for the direct name
cp -a /etc/containers "/etc/netns/$CLI_NS/containers"
for d in containers docker; do
    for pair in "$UP_HOST:$W/regcache-ca.crt" "$DIRECT_HOST:$PKI/ca.crt"; do
        mkdir -p "/etc/netns/$CLI_NS/$d/certs.d/${pair%%:*}"
        cp "${pair#*:}" "/etc/netns/$CLI_NS/$d/certs.d/${pair%%:*}/ca.crt"
    done
done

# through regcache: https://nvcr.io/... (DNS -> regcache); direct: https://upstream.nvcr.test/... (DNS
# forwarded by regcache to dnsmasq -> 198.51.100.30, routed over the same veth)
via_url() { echo "https://$UP_HOST/v2/$REPO_NAME/blobs/$BIG_BLOB"; }
direct_url() { echo "https://$DIRECT_HOST/v2/$REPO_NAME/blobs/$BIG_BLOB"; }
http_code_in 200 cli curl -sS --max-time 10 --cacert "$W/regcache-ca.crt" "https://$UP_HOST/v2/" || die "client -> regcache"
http_code_in 200 cli curl -sS --max-time 10 --cacert "$PKI/ca.crt" "https://$DIRECT_HOST/v2/" || die "client -> upstream directly"

now() { date +%s.%N; }
secs() { stats elapsed "$1" "$2"; }
median() { stats median "$@"; }
ratio() { stats ratio "$1" "$2"; }
# shellcheck source=blob.sh
. "$HERE/blob.sh"
# shellcheck source=clients.sh
. "$HERE/clients.sh"
if [[ $BENCH_ONLY == blob ]]; then
    [[ $BENCH_NGINX == 1 ]] && start_nginx
    section_begin blob; blob_section; section_end blob
    if ((STREAMS > 0)); then section_begin streams; streams_section; section_end streams; fi
    blob_report
    streams_report
    [[ $BENCH_NGINX == 1 ]] && stop_forget "$NGINX_PID"
    sections_report
    OK=1
    exit 0
fi
if [[ $BENCH_ONLY == clients ]]; then
    [[ $BENCH_NGINX == 1 ]] && start_nginx
    section_begin clients; clients_section; section_end clients
    [[ $BENCH_NGINX == 1 ]] && stop_forget "$NGINX_PID"
    sections_report
    OK=1
    exit 0
fi

# ---------------------------------------------------------------------------------------------------
# 1. image pulls

section_begin pull

# shellcheck source=pull.sh
. "$HERE/pull.sh"
# skopeo copy into a tmpfs that exists only for this command (mount namespace of ip netns exec); its
# user and system CPU seconds into $W/client.cpu
skopeo_pull() { # REF LOGNAME: prints seconds
    local t0 t1 TIMEFORMAT='%U %S'
    t0=$(now)
    # shellcheck disable=SC2016
    { time ip netns exec "$CLI_NS" sh -c "$HERMETIC_MOUNTS"' && mount -n -t tmpfs -o size=1200m rcbench-oci "$1" && shift && exec "$@"' \
        sh "$W/oci" timeout 600 skopeo copy "docker://$1" "oci:$W/oci/img:x" >"$LOGS/$2.log" 2>&1; } 2>"$W/client.cpu" \
        || die "skopeo copy docker://$1 (logs/$2.log)"
    t1=$(now)
    pull_stat >"$W/pull.end"
    secs "$t0" "$t1"
}
declare -A T=()   # "client kind" -> space-separated seconds
pull_table() {
    say ""
    say "image pull, seconds (median of $ROUNDS; each round: direct, cold, warm)"
    printf '  %-8s %-10s %8s  %-7s  %s\n' client path median "/direct" runs
    for client in skopeo dockerd; do
        [[ $client == dockerd && $DOCKER_DONE != 1 ]] && continue
        # shellcheck disable=SC2086
        dmed=$(median ${T[${client}_direct]})
        for kind in direct $(pull_kinds); do
            # shellcheck disable=SC2086
            med=$(median ${T[${client}_$kind]})
            printf '  %-8s %-10s %8s  %-7s %s\n' "$client" "$kind" "$med" "$(ratio "$med" "$dmed")" "${T[${client}_$kind]}"
        done
    done
}
# pull_rounds CLIENT PULL-FUNC LOG-PREFIX: ROUNDS rounds of direct, cold (empty cache), warm into T[CLIENT_kind]
pull_rounds() {
    local c=$1 pull=$2 pfx=$3 r
    for ((r = 1; r <= ROUNDS; r++)); do
        measured_pull "$c" direct "$r" "$pull" "$DIRECT_HOST/$REPO_NAME:$TAG" "$pfx-direct-$r"
        for ab in $PULL_AB; do
            pull_bin "$ab"
            empty_cache
            measured_pull "$c" "cold${ab#-}" "$r" "$pull" "$UP_HOST/$REPO_NAME:$TAG" "$pfx-cold${ab#-}-$r"
            measured_pull "$c" "warm${ab#-}" "$r" "$pull" "$UP_HOST/$REPO_NAME:$TAG" "$pfx-warm${ab#-}-$r"
        done
        info "$c round $r: direct${T[${c}_direct]##* } s, cold${T[${c}_cold]##* } s, warm${T[${c}_warm]##* } s"
        [[ $c != skopeo ]] || for ab in $PULL_AB; do pull_bin "$ab"; cold_blob_round "$r" "$ab"; done
    done
}
pull_rounds skopeo skopeo_pull skopeo

DOCKER_DONE=0
if [[ $BENCH_DOCKERD == 1 ]]; then
    D=$W/docker
    dockerd_dir "$D" '{"max-concurrent-downloads": 3, "log-level": "warn"}'
    export DOCKER_HOST=unix://$D/docker.sock
    bg dockerd "$CLI_NS" sh -c "$(dockerd_sh "$D")"
    DOCKERD_PID=$!
    if wait_for dockerd "$DOCKERD_PID" 120 0.5 docker info; then
        # REF LOGNAME: prints seconds; removes the image afterwards (outside the timing and the CPU figures)
        docker_pull() {
            local t0 t1 c0
            c0=$(tree_us "$DOCKERD_PID")
            t0=$(now)
            timeout 600 docker pull "$1" >"$LOGS/$2.log" 2>&1 || die "docker pull $1 (logs/$2.log)"
            t1=$(now)
            pull_stat >"$W/pull.end"
            pull_delta "$c0" "$(tree_us "$DOCKERD_PID")" >"$W/client.cpu"
            docker image inspect --format '{{join .RepoDigests " "}}' "$1" >>"$LOGS/$2.log"
            docker rmi -f "$1" >/dev/null 2>&1 || true
            secs "$t0" "$t1"
        }
        pull_rounds dockerd docker_pull docker
        DOCKER_DONE=1
    else
        info "dockerd did not start (logs/dockerd.log): no dockerd figures"
    fi
    stop_forget "$DOCKERD_PID"
    rm -rf "$D/data"
fi
section_end pull
if [[ $BENCH_ONLY == pull ]]; then
    say ""
    say "regcache benchmark, BENCH_ONLY=pull  $(date -u '+%Y-%m-%d %H:%M UTC')  $(nproc) CPUs  binary: $BIN_DESC"
    say "load average at start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    pull_table
    pull_costs_report
    info "finished after $((SECONDS - T0)) s (BENCH_ONLY=pull)"
    OK=1
    exit 0
fi

[[ $BENCH_NGINX == 1 ]] && start_nginx
# memory first (bench/memory.sh), on fresh processes of both servers as with BENCH_ONLY=memory: regcache
# restarted (its cache kept), nginx just started
if [[ $BENCH_NGINX == 1 && ${BENCH_MEMORY:-1} == 1 ]]; then
    stop_regcache
    start_regcache
    section_begin memory; memory_section; section_end memory
elif [[ ${BENCH_MEMORY:-1} == 1 ]]; then
    info "no memory section (needs nginx)"
fi

# 2. and 3. the warm 512 MiB blob: one curl stream, then BENCH_STREAMS parallel streams (bench/blob.sh)
section_begin blob; blob_section; section_end blob
if ((STREAMS > 0)); then section_begin streams; streams_section; section_end streams; fi

# 4. small requests (bench/small.sh), while nginx is still up
if [[ $BENCH_NGINX == 1 ]] && command -v hey >/dev/null && command -v wrk >/dev/null; then
    section_begin small; small_section; section_end small
else
    info "no small-request section (needs nginx, hey and wrk)"
fi

# BENCH_CLIENTS skopeo clients at once (bench/clients.sh), after the small requests: 16 skopeos leave
# a load average that takes a minute to decay
if ((CLIENTS > 0)); then section_begin clients; clients_section; section_end clients; fi

NGINX_VERSION=''
if [[ $BENCH_NGINX == 1 ]]; then
    NGINX_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')
    stop_forget "$NGINX_PID"
fi

# ---------------------------------------------------------------------------------------------------
# report

say ""
say "regcache benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')  $(nproc) CPUs  $(uname -r)"
say "binary: $BIN_DESC"
[[ -n $NGINX_VERSION ]] && say "nginx: $NGINX_VERSION, bench/nginx.conf.in (proxy_cache on disk, sendfile, output_buffers 2 1m, keepalive upstream pool, cache lock)"
say "image: $UP_HOST/$REPO_NAME:$TAG, $((IMAGE_BYTES >> 20)) MiB of blobs (layers ${LAYERS_MIB[*]} MiB, random, gzip)"
say "load average at start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the bench alone keeps it near 1-2;"
say "  higher means something else shared the CPUs)"
say ""
pull_table
pull_costs_report
blob_report
streams_report
say ""
if [[ ${BENCH_FLEET:-1} == 1 ]]; then
    stop_regcache
    section_begin fleet; fleet_section; section_end fleet
    say ""
fi
sections_report
ng_disk=''
[[ $BENCH_NGINX == 1 ]] && ng_disk=", nginx cache $(du -sh "$NG/cache" | cut -f1)"
info "finished after $((SECONDS - T0)) s; disk at the end: upstream $(du -sh "$UP/storage" | cut -f1), cache $(du -sh "$RC/cache" | cut -f1)$ng_disk"
OK=1
