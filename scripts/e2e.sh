#!/usr/bin/env bash
# End-to-end test of regcache with real clients (dig, dockerd, skopeo, podman) in network namespaces.
#
#   sudo bash scripts/e2e.sh            # builds target/debug/regcache unless REGCACHE_BIN is set
#   REGCACHE_BIN=path E2E_KEEP=1 bash scripts/e2e.sh
#
# World (everything is minted and generated at run time; no internet is used):
#   namespace APP  10.77.0.1/24  regcache (dns :53, https :443, plain-HTTP mirror :80, admin 0.0.0.0:9090),
#                  later a dockerd running it with docker-compose, and the "internet"
#                  as /32s on its loopback: dnsmasq 127.0.0.1:5353 (the upstream resolver),
#                  CNCF distribution for registry-1.docker.io (token auth + 307 to the CDN), ghcr.io,
#                  nvcr.io and quay.io (HTTP Basic auth, htpasswd), a token service for auth.docker.io
#                  and a static CDN server.
#   namespace CLI  10.77.0.2/24  dockerd, skopeo, podman, dig; resolver 10.77.0.1; trusts regcache's CA (in
#                  its system store and in certs.d/<host> for every intercepted host, as the README's
#                  client setup does) but not the world's public CA, and has no route to the upstream
#                  addresses (ip_forward=0 in APP as well).
# regcache intercepts registry-1.docker.io (aliases docker.io, index.docker.io), auth.docker.io (Docker
# Hub's token realm), ghcr.io, nvcr.io and quay.io, like its embedded default list.
#
# Content cache checks: 8 concurrent cold GETs of one 96 MiB blob reach the upstream once (counted in
# its own request log); a Basic-auth upstream's cached content is refused to clients without or with
# wrong credentials; and last, with every upstream process stopped (registries, token service, CDN;
# dnsmasq and regcache stay), dockerd, skopeo and podman pull the images again with fresh client state,
# and what must stay refused stays refused. "INFO: offline: ..." lines record offline cases that are
# observed but not asserted (each with its log, what regcache logged and answered included).
#
# Deployment and onboarding checks: mirror mode (a client dockerd with "registry-mirrors" and ctr with a
# hosts.toml mirror, both without DNS for registry names and without regcache's CA, pull over plain
# HTTP); scripts/client-setup.sh in CLI (--dry-run, then --root DIR); with the upstreams back after the
# offline checks, the appliance's own Docker Hub credentials switched in and out with SIGHUP (anonymous
# skopeo and dockerd read the private repository only while they are configured); /metrics saved as
# metrics-after-pulls.txt and checked with promtool; last, the binary stops and the repo's
# docker-compose.yml runs the appliance (image from scripts/docker-image.sh, uid 10001, file capability
# for ports 53/443/80) on a dockerd inside APP, and a subset of the client checks runs against it.
#
# Trust checks (issue 9; scripts/e2e/trust.sh, sourced): attacks while the first appliance runs (a registry
# that redirects every request, as registry.k8s.io does, and one behind an SSO login page, tried with
# quay.io's cached private digests over HTTPS and the mirror; credential headers on a cross-host
# redirect; a registry whose HEAD of a tag names another registry's private digest), then faults after it stopped (upstream reset mid-blob, kill -9 mid-fill, a full tmpfs
# cache, 5,000 idle connections plus slowloris, SIGTERM during a pull), each on a fresh appliance.
#
# Prints PASS/FAIL/SKIP/INFO/FINDING lines and ends with "e2e: N passed, M failed"; exit 1 on any FAIL.
# FINDING lines state observed client behaviour (dockerd's trust for Docker Hub names); each is also a
# PASS/FAIL check that asserts the behaviour found, so a change in it fails the run.
# Logs of every service and check go to a work dir, kept (and printed) on failure or with E2E_KEEP=1.
#
# Environment: REGCACHE_BIN (skip cargo build), E2E_ONLY (default: everything; "trust" = the attack and
# fault checks plus the setup they need, about 2.5 minutes; or a comma list of main, attacks, faults),
# E2E_KEEP=1, E2E_WORKDIR (parent of the work dir, default /tmp), PYTHON (default /usr/bin/python3),
# RUST_LOG (passed to regcache when set; unset by default, so regcache's own default filter applies).
# Tools besides those checked at start (a missing one fails or skips its checks): docker-compose (v1,
# Debian package docker-compose), setcap/getcap (libcap2-bin), promtool (prometheus), ctr (containerd).
set -Eeuo pipefail
shopt -u patsub_replacement 2>/dev/null || true

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ASSETS=$HERE/e2e
PY=${PYTHON:-/usr/bin/python3}

# Fixed names so a crashed run's leftovers are found and removed by the next run (see remove_stale).
APP_NS=rce2e-app
CLI_NS=rce2e-cli
APP_IP=10.77.0.1
CLI_IP=10.77.0.2
DNSMASQ_PORT=5353
ADMIN_PORT=9090

# The "internet", as seen from APP (addresses on APP's loopback).
HUB_HOST=registry-1.docker.io HUB_IP=198.51.100.10
AUTH_HOST=auth.docker.io      AUTH_IP=198.51.100.11
CDN_HOST=production.cloudflare.docker.com CDN_IP=198.51.100.12
GHCR_HOST=ghcr.io             GHCR_IP=198.51.100.20
NVCR_HOST=nvcr.io             NVCR_IP=198.51.100.30
QUAY_HOST=quay.io             QUAY_IP=198.51.100.40   # HTTP Basic auth (htpasswd)
NVCR_EDGE=nvcr-edge.example.net   # nvcr.io is a CNAME to this name, to exercise CNAME chains upstream
OTHER_HOST=example.org        OTHER_IP=198.51.100.99
# the trust checks' registries that redirect without checking (scripts/e2e/trust.sh)
K8S_HOST=registry.k8s.io      K8S_IP=198.51.100.50    # 307s every /v2/ object request to its store
K8S_STORE=registry-k8s-io-store.s3.example.net K8S_STORE_IP=198.51.100.51   # holds nothing: 404
SSO_HOST=registry.corp.example SSO_IP=198.51.100.60   # behind an SSO proxy: 302s everything to its login host
LOGIN_HOST=login.corp.example  LOGIN_IP=198.51.100.61 # 200 text/html for everything
LIAR_HOST=registry.liar.example LIAR_IP=198.51.100.70  # its HEAD of a tag names a digest its GET does not serve
UPSTREAMS=("$HUB_HOST:$HUB_IP" "$AUTH_HOST:$AUTH_IP" "$CDN_HOST:$CDN_IP" "$GHCR_HOST:$GHCR_IP" "$NVCR_HOST:$NVCR_IP"
    "$QUAY_HOST:$QUAY_IP" "$K8S_HOST:$K8S_IP" "$K8S_STORE:$K8S_STORE_IP" "$SSO_HOST:$SSO_IP" "$LOGIN_HOST:$LOGIN_IP"
    "$LIAR_HOST:$LIAR_IP")
INTERCEPTED=(registry-1.docker.io docker.io index.docker.io auth.docker.io ghcr.io nvcr.io quay.io "$K8S_HOST" "$SSO_HOST"
    "$LIAR_HOST")
TOKEN_ISSUER=e2e-token-issuer
SEED_USER=seed
QUAY_USER=robot
BIG_MIB=96              # the blob of the coalescing check

# E2E_ONLY: which phases run (want PHASE); setup runs whatever is chosen
E2E_ONLY=${E2E_ONLY:-}
want() { # main | attacks | faults
    case ${E2E_ONLY:-all} in
    all) return 0 ;;
    trust) [[ $1 == attacks || $1 == faults ]] ;;
    *) [[ ,$E2E_ONLY, == *",$1,"* ]] ;;
    esac
}

# Proxy and trust settings of the caller must not leak into the clients.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY \
    SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE REGISTRY_AUTH_FILE DOCKER_HOST || true

# ---------------------------------------------------------------------------------------------------
# bookkeeping

PASSED=0 FAILED=0 NCHECK=0
PIDS=()                 # every background process this script started (ip netns exec execs in place)
declare -A PIDNAME=()
W='' LOGS='' NETNS_DIR_CREATED=0 RUN_NETNS_CREATED=0

say() { printf '%s\n' "$*"; }
info() { say "INFO: $*"; }
die() { say "e2e: setup failed: $*" >&2; exit 1; }

check_log() { # NAME: the log file of check number NCHECK
    printf '%s/checks/%03d-%s.log' "$W" "$NCHECK" "$(printf '%s' "$1" | tr -c 'a-zA-Z0-9._-' '_' | cut -c1-60)"
}
# run_check NAME FUNC ARGS...: runs FUNC in a subshell with errexit, output to its own log.
run_check() {
    local name=$1 log rc; shift
    NCHECK=$((NCHECK + 1))
    log=$(check_log "$name")
    set +e
    ( set -e; "$@" ) >"$log" 2>&1
    rc=$?
    set -e
    report "$name" "$rc" "$log"
}
# run_check_here NAME FUNC ARGS...: the same in the current shell, for FUNCs that change its state
# (they must handle their own errors: errexit does not apply).
run_check_here() {
    local name=$1 log rc=0; shift
    NCHECK=$((NCHECK + 1))
    log=$(check_log "$name")
    "$@" >"$log" 2>&1 || rc=$?
    report "$name" "$rc" "$log"
}
report() { # NAME RC LOG
    local name=$1 rc=$2 log=$3
    if [[ $rc == 0 ]]; then
        PASSED=$((PASSED + 1)); say "PASS: $name"
    else
        FAILED=$((FAILED + 1)); say "FAIL: $name   [${log#"$W"/}]"
        tail -n 8 "$log" | sed 's/^/    | /'
    fi
    return 0
}
skip() { say "SKIP: $*"; }

expect_eq() { # GOT WANT WHAT
    if [[ $1 == "$2" ]]; then echo "ok: $3 = $1"; else echo "mismatch: $3: got '$1', want '$2'"; return 1; fi
}

app() { ip netns exec "$APP_NS" "$@"; }
cli() { ip netns exec "$CLI_NS" "$@"; }

# Clients write state outside their --root flags (containers/image's blob-info cache in /var/lib/containers,
# podman's /run/containers, dockerd's /run/docker/plugins): they get private tmpfs mounts on /run and
# /var/lib inside the mount namespace that `ip netns exec` creates, so nothing is left on the host.
# (This also hides a system containerd socket from dockerd, which then starts its own.)
HERMETIC_MOUNTS='mount -n -t tmpfs -o size=64m,mode=755 rce2e-run /run && mount -n -t tmpfs -o size=64m,mode=755 rce2e-varlib /var/lib'
isolated() { # NS CMD...
    local ns=$1; shift
    ip netns exec "$ns" sh -c "$HERMETIC_MOUNTS"' && exec "$@"' sh "$@"
}

RESOLVE=()
for hp in "${UPSTREAMS[@]}"; do RESOLVE+=(--resolve "${hp%%:*}:443:${hp#*:}"); done
# curl inside APP straight to the upstreams, trusting the public CA.
app_curl() { app curl -sS --max-time 60 --cacert "$PKI/ca.crt" "${RESOLVE[@]}" "$@"; }
# curl inside CLI, resolving through the appliance and trusting only its CA.
cli_curl() { cli curl -sS --max-time 60 --cacert "$W/regcache-ca.crt" "$@"; }

bg() { # NAME NS CMD...: start in the background, output to logs/NAME.log
    local name=$1 ns=$2; shift 2
    ip netns exec "$ns" "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9<&- &
    PIDS+=("$!"); PIDNAME[$!]=$name
}

alive() { kill -0 "$1" 2>/dev/null; }

# wait_for DESC PID TRIES DELAY CMD...: bounded retry; fails early when PID (if not "-") died.
wait_for() {
    local desc=$1 pid=$2 tries=$3 delay=$4 i; shift 4
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [[ $pid != - ]] && ! alive "$pid"; then
            say "e2e: $desc: process ${PIDNAME[$pid]:-$pid} exited" >&2
            [[ -f $LOGS/${PIDNAME[$pid]:-none}.log ]] && tail -n 20 "$LOGS/${PIDNAME[$pid]}.log" >&2
            return 1
        fi
        sleep "$delay"
    done
    say "e2e: timed out waiting for $desc" >&2
    return 1
}

stop_pid() { # PID: TERM, up to 10 s, then KILL; reap
    local pid=$1 i
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then
        say "e2e: ${PIDNAME[$pid]:-$pid} ignored SIGTERM for 10 s, killing" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

forget_pid() { # PID: drop from PIDS after it was stopped
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Kill whatever still runs inside one of our namespaces (children such as dockerd's containerd),
# by PID, then delete the namespace and its /etc/netns folder.
remove_ns() {
    local ns=$1 pid
    if ip netns list | awk '{print $1}' | grep -x "$ns" >/dev/null; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        sleep 0.2
        ip netns del "$ns" 2>/dev/null || true
    fi
    rm -rf "/etc/netns/$ns"
}

remove_stale() {
    local ns
    for ns in "$APP_NS" "$CLI_NS"; do
        if ip netns list | awk '{print $1}' | grep -x "$ns" >/dev/null || [[ -e /etc/netns/$ns ]]; then
            info "removing stale namespace $ns from an earlier run"
            remove_ns "$ns"
        fi
    done
}

cleanup() {
    local rc=$? i
    set +e
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    remove_ns "$CLI_NS"
    remove_ns "$APP_NS"
    if [[ $NETNS_DIR_CREATED == 1 ]]; then rmdir /etc/netns 2>/dev/null; fi
    # ip netns add made /run/netns (a shared bind mount of itself); undo that when it was ours and is empty
    if [[ $RUN_NETNS_CREATED == 1 && -z $(ip netns list) ]]; then
        umount -n /run/netns 2>/dev/null
        rmdir /run/netns 2>/dev/null
    fi
    if [[ -n $W && -d $W ]]; then
        if [[ ${E2E_KEEP:-0} == 1 || $FAILED != 0 || $rc != 0 ]]; then
            say "e2e: work dir kept: $W"
        else
            rm -rf "$W"
        fi
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------------
# preflight

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, dockerd)"
[[ ,${E2E_ONLY:-trust}, =~ ^(,(main|attacks|faults|trust))+,$ ]] || die "E2E_ONLY: want trust or a comma list of main, attacks, faults"
for tool in ip dig curl openssl jq skopeo podman dockerd docker docker-registry dnsmasq flock timeout "$PY"; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
exec 9<"${BASH_SOURCE[0]}"
flock -n 9 || die "another scripts/e2e.sh run holds the lock"

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# report setup errors of the main shell (checks run in subshells and report for themselves)
trap '[[ $- == *e* && $BASHPID == "$$" ]] && say "e2e: error at line $LINENO: $BASH_COMMAND" >&2' ERR

remove_stale
W=$(mktemp -d "${E2E_WORKDIR:-/tmp}/rce2e.XXXXXX")
chmod 755 "$W"
LOGS=$W/logs
PKI=$W/pki
mkdir -p "$LOGS" "$PKI" "$W/checks" "$W/home/.docker" "$W/xdg-run" "$W/images"
echo '{}' >"$W/home/.docker/config.json"    # podman insists on it once DOCKER_CONFIG is set
info "work dir $W"
T0=$SECONDS
# shellcheck source=e2e/trust.sh
. "$ASSETS/trust.sh"
[[ -z $E2E_ONLY ]] || info "E2E_ONLY=$E2E_ONLY: main checks $(want main && echo on || echo off), attacks $(want attacks && echo on || echo off), faults $(want faults && echo on || echo off)"

# ---------------------------------------------------------------------------------------------------
# regcache binary

BIN_OK=0
if [[ -n ${REGCACHE_BIN:-} ]]; then
    BIN=$REGCACHE_BIN
else
    BIN=$REPO/target/debug/regcache
    info "cargo build (log: logs/cargo-build.log)"
    if ! (cd "$REPO" && timeout 900 cargo build) >"$LOGS/cargo-build.log" 2>&1; then
        tail -n 15 "$LOGS/cargo-build.log" | sed 's/^/    | /'
        BIN=''
    fi
fi
binary_works() {
    [[ -n $BIN && -x $BIN ]] || { echo "no executable at '${BIN}'"; return 1; }
    "$BIN" --help >"$W/help.txt"
    cat "$W/help.txt"
    grep -qw serve "$W/help.txt" || { echo "--help does not list 'serve'"; return 1; }
    "$BIN" ca --help
}
run_check "regcache binary builds and answers --help" binary_works
[[ $FAILED == 0 ]] && BIN_OK=1
# From here on the clients get a private HOME (no credentials or config of the caller); after the
# build, since cargo and rustup find their homes through HOME.
export HOME=$W/home XDG_RUNTIME_DIR=$W/xdg-run DOCKER_CONFIG=$W/home/.docker

# ---------------------------------------------------------------------------------------------------
# public PKI (the "internet" CA), minted per run

mint_pki() {
    cd "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout ca.key -out ca.crt -subj "/CN=regcache e2e public root $$" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    local name
    for name in "$HUB_HOST" "$AUTH_HOST" "$CDN_HOST" "$GHCR_HOST" "$NVCR_HOST" "$QUAY_HOST" \
        "$K8S_HOST" "$K8S_STORE" "$SSO_HOST" "$LOGIN_HOST" "$LIAR_HOST"; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$name"
        printf 'subjectAltName=DNS:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
            "$name" >"$name.ext"
        openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$name.ext" -out "$name.crt"
    done
    # token signing certificate (RS256); distribution checks its x5c chain against ca.crt
    openssl req -newkey rsa:2048 -nodes -keyout token-signing.key -out token-signing.csr -subj "/CN=$TOKEN_ISSUER"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >token-signing.ext
    openssl x509 -req -in token-signing.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile token-signing.ext -out token-signing.crt
    mkdir -p certdir && cp ca.crt certdir/ca.crt     # for skopeo --cert-dir straight to the upstreams
}
info "minting the public PKI (logs/pki.log)"
mint_pki >"$LOGS/pki.log" 2>&1
SEED_PASS=$(openssl rand -hex 12)
QUAY_PASS=$(openssl rand -hex 12)

# ---------------------------------------------------------------------------------------------------
# namespaces and the link between them

[[ -d /etc/netns ]] || { mkdir /etc/netns; NETNS_DIR_CREATED=1; }
[[ -d /run/netns ]] || RUN_NETNS_CREATED=1      # ip netns add creates it
# ip netns exec binds /etc/netns/NS/docker and /etc/netns/NS/containers only over folders that exist.
mkdir -p /etc/docker /etc/containers
[[ -d /etc/ssl ]] || die "/etc/ssl missing"

ip netns add "$APP_NS"
ip netns add "$CLI_NS"
ip link add rce2e-app netns "$APP_NS" type veth peer name rce2e-cli netns "$CLI_NS"
ip -n "$APP_NS" addr add "$APP_IP/24" dev rce2e-app
ip -n "$CLI_NS" addr add "$CLI_IP/24" dev rce2e-cli
for ns in "$APP_NS" "$CLI_NS"; do
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0
done
ip -n "$APP_NS" link set rce2e-app up
ip -n "$CLI_NS" link set rce2e-cli up
for hp in "${UPSTREAMS[@]}" "$OTHER_HOST:$OTHER_IP"; do ip -n "$APP_NS" addr add "${hp#*:}/32" dev lo; done

# APP has no system resolver (anything that bypasses the configured dns.upstream fails fast); the
# upstream names are only in a hosts file while the world is checked directly, before regcache starts.
mkdir -p "/etc/netns/$APP_NS" "/etc/netns/$CLI_NS"
echo "nameserver 127.0.0.9" >"/etc/netns/$APP_NS/resolv.conf"
{
    echo "127.0.0.1 localhost"
    for hp in "${UPSTREAMS[@]}"; do echo "${hp#*:} ${hp%%:*}"; done
} >"/etc/netns/$APP_NS/hosts"
echo "nameserver $APP_IP" >"/etc/netns/$CLI_NS/resolv.conf"

# ---------------------------------------------------------------------------------------------------
# upstream resolver

bg dnsmasq "$APP_NS" dnsmasq -k -C /dev/null --log-facility=- --log-queries --user=root \
    --pid-file="$W/dnsmasq.pid" --port "$DNSMASQ_PORT" --listen-address=127.0.0.1 --bind-interfaces \
    --no-resolv --no-hosts --local-ttl=300 \
    --host-record="$HUB_HOST,$HUB_IP" --host-record="$AUTH_HOST,$AUTH_IP" --host-record="$CDN_HOST,$CDN_IP" \
    --host-record="$GHCR_HOST,$GHCR_IP" --host-record="$NVCR_EDGE,$NVCR_IP" --cname="$NVCR_HOST,$NVCR_EDGE" \
    --host-record="$QUAY_HOST,$QUAY_IP" \
    --host-record="$K8S_HOST,$K8S_IP" --host-record="$K8S_STORE,$K8S_STORE_IP" \
    --host-record="$SSO_HOST,$SSO_IP" --host-record="$LOGIN_HOST,$LOGIN_IP" --host-record="$LIAR_HOST,$LIAR_IP" \
    --host-record="$OTHER_HOST,$OTHER_IP" --cname="www.$OTHER_HOST,$OTHER_HOST" \
    --address=/#/
DNSMASQ_PID=$!
wait_for dnsmasq "$DNSMASQ_PID" 50 0.1 app dig +time=1 +tries=1 +short -p "$DNSMASQ_PORT" @127.0.0.1 "$OTHER_HOST" \
    || die "dnsmasq did not start (logs/dnsmasq.log)"

# ---------------------------------------------------------------------------------------------------
# upstream registries, token service, CDN

UP=$W/upstream
mkdir -p "$UP/hub" "$UP/ghcr" "$UP/nvcr" "$UP/quay"

render() { # TEMPLATE OUT KEY=VALUE...
    local tmpl=$1 out=$2 kv text; shift 2
    text=$(<"$tmpl")
    for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
    [[ $text != *@[A-Z_]*@* ]] || { say "unfilled placeholder in $out" >&2; return 1; }
    printf '%s\n' "$text" >"$out"
}

render "$ASSETS/registry-hub.yml.in" "$UP/hub/config.yml" ROOT="$UP/hub/storage" ADDR="$HUB_IP:443" \
    SECRET="$(openssl rand -hex 16)" CERT="$PKI/$HUB_HOST.crt" KEY="$PKI/$HUB_HOST.key" \
    CDN_HOST="$CDN_HOST" AUTH_HOST="$AUTH_HOST" ISSUER="$TOKEN_ISSUER" TOKEN_ROOTS="$PKI/ca.crt"
render "$ASSETS/registry-plain.yml.in" "$UP/ghcr/config.yml" ROOT="$UP/ghcr/storage" ADDR="$GHCR_IP:443" \
    SECRET="$(openssl rand -hex 16)" CERT="$PKI/$GHCR_HOST.crt" KEY="$PKI/$GHCR_HOST.key"
render "$ASSETS/registry-plain.yml.in" "$UP/nvcr/config.yml" ROOT="$UP/nvcr/storage" ADDR="$NVCR_IP:443" \
    SECRET="$(openssl rand -hex 16)" CERT="$PKI/$NVCR_HOST.crt" KEY="$PKI/$NVCR_HOST.key"
# quay.io: htpasswd with one bcrypt entry (cost 4: distribution checks it on every request). htpasswd
# (apache2-utils) when installed, else Python's crypt module (libxcrypt does bcrypt).
bcrypt_hash() { # PASSWORD
    if command -v htpasswd >/dev/null; then
        htpasswd -nbB -C 4 x "$1" | sed -n 's/^x://p'
    else
        "$PY" -W ignore -c 'import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))' "$1"
    fi
}
printf '%s:%s\n' "$QUAY_USER" "$(bcrypt_hash "$QUAY_PASS")" >"$UP/quay/htpasswd"
grep -qE '^[a-z]+:\$2[aby]\$04\$.{53}$' "$UP/quay/htpasswd" || die "no bcrypt hash for quay.io's htpasswd"
render "$ASSETS/registry-basic.yml.in" "$UP/quay/config.yml" ROOT="$UP/quay/storage" ADDR="$QUAY_IP:443" \
    SECRET="$(openssl rand -hex 16)" CERT="$PKI/$QUAY_HOST.crt" KEY="$PKI/$QUAY_HOST.key" \
    REALM="e2e-quay" HTPASSWD="$UP/quay/htpasswd"
mkdir -p "$UP/hub/storage" "$UP/ghcr/storage" "$UP/nvcr/storage" "$UP/quay/storage"

http_code_in() { # WANTED-CODES CURL-ARGS...: curl answers one of the codes (space separated)
    local want=$1 code; shift
    code=$("$@" -o /dev/null -w '%{http_code}') || return 1
    [[ " $want " == *" $code "* ]]
}
# start_upstreams [LOG-SUFFIX]: every upstream process (again after the offline checks, on the same storage)
start_upstreams() {
    local sfx=${1:-}
    bg "upstream-hub$sfx" "$APP_NS" docker-registry serve "$UP/hub/config.yml"
    HUB_PID=$!
    bg "upstream-ghcr$sfx" "$APP_NS" docker-registry serve "$UP/ghcr/config.yml"
    GHCR_PID=$!
    bg "upstream-nvcr$sfx" "$APP_NS" docker-registry serve "$UP/nvcr/config.yml"
    NVCR_PID=$!
    bg "upstream-quay$sfx" "$APP_NS" docker-registry serve "$UP/quay/config.yml"
    QUAY_PID=$!
    bg "upstream-auth$sfx" "$APP_NS" "$PY" "$ASSETS/token_server.py" --listen "$AUTH_IP:443" \
        --tls-cert "$PKI/$AUTH_HOST.crt" --tls-key "$PKI/$AUTH_HOST.key" \
        --sign-cert "$PKI/token-signing.crt" --sign-key "$PKI/token-signing.key" \
        --issuer "$TOKEN_ISSUER" --user "$SEED_USER:$SEED_PASS" --private-prefix e2eprivate/
    AUTH_PID=$!
    bg "upstream-cdn$sfx" "$APP_NS" "$PY" "$ASSETS/static_server.py" --listen "$CDN_IP:443" --root "$UP/hub/storage" \
        --tls-cert "$PKI/$CDN_HOST.crt" --tls-key "$PKI/$CDN_HOST.key"
    CDN_PID=$!
    wait_for "$HUB_HOST" "$HUB_PID" 100 0.1 http_code_in 401 app_curl --max-time 2 "https://$HUB_HOST/v2/" &&
        wait_for "$GHCR_HOST" "$GHCR_PID" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$GHCR_HOST/v2/" &&
        wait_for "$NVCR_HOST" "$NVCR_PID" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$NVCR_HOST/v2/" &&
        wait_for "$QUAY_HOST" "$QUAY_PID" 100 0.1 http_code_in 401 app_curl --max-time 2 "https://$QUAY_HOST/v2/" &&
        wait_for "$AUTH_HOST" "$AUTH_PID" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$AUTH_HOST/token?service=x" &&
        wait_for "$CDN_HOST" "$CDN_PID" 100 0.1 http_code_in 404 app_curl --max-time 2 "https://$CDN_HOST/nothing"
}
start_upstreams || die "an upstream did not start (logs/upstream-*.log)"
info "upstreams up after $((SECONDS - T0)) s"

# ---------------------------------------------------------------------------------------------------
# test images: generated locally, pushed through the registry HTTP API

hub_token() { # REPO ACTIONS [anonymous]
    local creds=(-u "$SEED_USER:$SEED_PASS")
    [[ ${3:-} == anonymous ]] && creds=()
    app_curl -f "${creds[@]}" "https://$AUTH_HOST/token?service=registry.docker.io&scope=repository:$1:$2" | jq -er .token
}

# push_blob HOST REPO FILE DIGEST [AUTHORIZATION]: monolithic upload (POST, then PUT ?digest=)
push_blob() {
    local host=$1 repo=$2 file=$3 digest=$4 auth=() loc sep
    [[ -n ${5:-} ]] && auth=(-H "Authorization: $5")
    loc=$(app_curl -f "${auth[@]}" -X POST -o /dev/null -w '%header{location}' "https://$host/v2/$repo/blobs/uploads/")
    [[ $loc == /* ]] && loc=https://$host$loc
    [[ $loc == *\?* ]] && sep='&' || sep='?'
    app_curl -f "${auth[@]}" -o /dev/null -H 'Content-Type: application/octet-stream' -T "$file" "$loc${sep}digest=$digest"
}

# push_layout HOST REPO DIR [AUTHORIZATION]: uploads DIR/push-plan (from gen_image.py) with curl
push_layout() {
    local host=$1 repo=$2 dir=$3 auth=() kind a b c got
    [[ -n ${4:-} ]] && auth=(-H "Authorization: $4")
    while read -r kind a b c; do
        case $kind in
        blob)
            push_blob "$host" "$repo" "$dir/blobs/sha256/${a#sha256:}" "$a" "${4:-}"
            ;;
        manifest | tag)
            local ref=$a digest=$b mt=$c
            [[ $kind == manifest ]] && ref=$a digest=$a mt=$b
            got=$(app_curl -f "${auth[@]}" -o /dev/null -w '%header{docker-content-digest}' -H "Content-Type: $mt" \
                -T "$dir/blobs/sha256/${digest#sha256:}" "https://$host/v2/$repo/manifests/$ref")
            [[ $got == "$digest" ]] || { say "push $host/$repo:$ref: registry says digest $got, want $digest" >&2; return 1; }
            ;;
        esac
    done <"$dir/push-plan"
}

declare -A DIGEST=()       # image key -> top-level digest as pushed
declare -A PLAT_DIGEST=()  # image key -> linux/amd64 manifest digest (differs from DIGEST for an index)
BIG_DIGEST=''

# seed KEY HOST REPO TAG GEN-ARGS...
seed() {
    local key=$1 host=$2 repo=$3 tag=$4 dir=$W/images/$1 auth=''; shift 4
    DIGEST[$key]=$("$PY" "$ASSETS/gen_image.py" "$dir" --name "$host/$repo" --tag "$tag" "$@")
    PLAT_DIGEST[$key]=$(awk '$1 == "manifest" {print $2; exit} $1 == "tag" {print $3}' "$dir/push-plan")
    case $host in
    "$HUB_HOST") auth="Bearer $(hub_token "$repo" pull,push)" ;;
    "$QUAY_HOST") auth="Basic $(printf '%s:%s' "$QUAY_USER" "$QUAY_PASS" | base64 -w0)" ;;
    esac
    push_layout "$host" "$repo" "$dir" "$auth"
    say "seeded $host/$repo:$tag ${DIGEST[$key]} (linux/amd64 ${PLAT_DIGEST[$key]})"
}
seed_all() {
    seed small "$HUB_HOST" library/small 1 --format docker --layer-mib 1 --layer-mib 4
    seed alpine "$HUB_HOST" library/alpine-ish latest --format oci --layer-mib 30 \
        --platform linux/amd64 --platform linux/arm64/v8
    seed private "$HUB_HOST" e2eprivate/secret 1 --format docker --layer-mib 1
    seed tool "$GHCR_HOST" acme/tool v1 --format docker --layer-mib 2 --layer-mib 3
    seed tiny "$NVCR_HOST" nvidia/tiny 25.03 --format docker --layer-mib 1
    seed quay "$QUAY_HOST" corp/app 1 --format oci --layer-mib 1 --layer-mib 2
    # trust checks: a Docker Hub blob nothing else reads (redirected to the CDN with a cookie), and an
    # image with one 24 MiB layer for the fault checks
    seed cookie "$HUB_HOST" library/cookiejar 1 --format docker --layer-mib 1
    seed fault "$NVCR_HOST" nvidia/fault 1 --format docker --layer-mib 24
    # one large random blob, no manifest: the coalescing check GETs it by digest
    head -c "$((BIG_MIB << 20))" /dev/urandom >"$W/images/big.bin"
    BIG_DIGEST=sha256:$(sha256sum "$W/images/big.bin" | cut -d' ' -f1)
    push_blob "$NVCR_HOST" nvidia/big "$W/images/big.bin" "$BIG_DIGEST"
    rm -f "$W/images/big.bin"
    say "seeded $NVCR_HOST/nvidia/big blob $BIG_DIGEST ($BIG_MIB MiB)"
    # not pushed: the client pushes it through the appliance (check 5)
    DIGEST[pushed]=$("$PY" "$ASSETS/gen_image.py" "$W/images/pushed" --name pushed --tag 1 --format oci --layer-mib 1)
}
info "generating and pushing test images (logs/seed.log)"
seed_all >"$LOGS/seed.log" 2>&1
sed 's/^/INFO: /' "$LOGS/seed.log"
info "images seeded after $((SECONDS - T0)) s"

# ---------------------------------------------------------------------------------------------------
# world checks: the upstreams work on their own (straight from APP, trusting the public CA)

world_hub_redirect() {
    local token out
    token=$(hub_token library/small pull anonymous)
    out=$(app_curl -o /dev/null -w '%{http_code} %{redirect_url}' -H "Authorization: Bearer $token" \
        "https://$HUB_HOST/v2/library/small/blobs/$(awk '$1 == "blob" {print $2; exit}' "$W/images/small/push-plan")")
    echo "$out"
    [[ $out == "307 https://$CDN_HOST/docker/registry/v2/blobs/"* ]]
}
world_hub_401() {
    local hdr
    hdr=$(app_curl -o /dev/null -w '%{http_code} %header{www-authenticate}' "https://$HUB_HOST/v2/")
    echo "$hdr"
    [[ $hdr == "401 Bearer realm=\"https://$AUTH_HOST/token\",service=\"registry.docker.io\""* ]]
}
world_anonymous_private() {
    local token
    token=$(hub_token e2eprivate/secret pull anonymous)
    http_code_in 401 app_curl -H "Authorization: Bearer $token" "https://$HUB_HOST/v2/e2eprivate/secret/manifests/1"
}
world_skopeo() { # REF KEY [copy]
    local got
    got=$(isolated "$APP_NS" skopeo inspect --cert-dir "$PKI/certdir" --format '{{.Digest}}' "docker://$1")
    expect_eq "$got" "${DIGEST[$2]}" "digest of $1"
    if [[ ${3:-} == copy ]]; then
        isolated "$APP_NS" timeout 300 skopeo copy --src-cert-dir "$PKI/certdir" "docker://$1" "oci:$W/world-copy-$2:x"
    fi
}
if want main; then
run_check "world: $HUB_HOST /v2/ is 401 with the auth.docker.io Bearer realm" world_hub_401
run_check "world: $HUB_HOST blob GET is a 307 to $CDN_HOST" world_hub_redirect
run_check "world: anonymous token cannot read e2eprivate/secret" world_anonymous_private
run_check "world: skopeo (direct) library/small:1" world_skopeo "$HUB_HOST/library/small:1" small copy
run_check "world: skopeo (direct) library/alpine-ish:latest (OCI index)" world_skopeo "$HUB_HOST/library/alpine-ish:latest" alpine copy
run_check "world: skopeo (direct) ghcr.io/acme/tool:v1" world_skopeo "$GHCR_HOST/acme/tool:v1" tool
run_check "world: skopeo (direct) nvcr.io/nvidia/tiny:25.03" world_skopeo "$NVCR_HOST/nvidia/tiny:25.03" tiny
world_quay_basic() {
    local hdr got
    hdr=$(app_curl -o /dev/null -w '%{http_code} %header{www-authenticate}' "https://$QUAY_HOST/v2/")
    echo "anonymous /v2/: $hdr"
    [[ $hdr == '401 Basic realm="e2e-quay"'* ]] || { echo "want a 401 with a Basic challenge"; return 1; }
    got=$(isolated "$APP_NS" skopeo inspect --cert-dir "$PKI/certdir" --creds "$QUAY_USER:$QUAY_PASS" \
        --format '{{.Digest}}' "docker://$QUAY_HOST/corp/app:1")
    expect_eq "$got" "${DIGEST[quay]}" "digest of $QUAY_HOST/corp/app:1 read with credentials"
}
run_check "world: $QUAY_HOST wants Basic auth; skopeo (direct) with credentials reads corp/app:1" world_quay_basic
fi
rm -f "/etc/netns/$APP_NS/hosts"

if [[ $BIN_OK != 1 ]]; then
    skip "every appliance check: the regcache binary is not usable (logs/cargo-build.log)"
    say "e2e: $PASSED passed, $FAILED failed"
    exit 1
fi

# ---------------------------------------------------------------------------------------------------
# the appliance

RC=$W/regcache
mkdir -p "$RC/state"
render_config() { # OUT STATE-DIR PUBLIC-CA [PASSWORD-FILE]: the e2e config (with Docker Hub credentials
    # for the appliance when PASSWORD-FILE is given)
    local creds=''
    [[ -n ${4:-} ]] && creds=$(printf 'username = "%s"\npassword_file = "%s"' "$SEED_USER" "$4")
    render "$ASSETS/regcache.toml.in" "$1" STATE_DIR="$2" APP_IP="$APP_IP" DNSMASQ_PORT="$DNSMASQ_PORT" \
        PUBLIC_CA="$3" ADMIN_PORT="$ADMIN_PORT" HUB_CREDENTIALS="$creds"
}
# config.toml is what `serve` reads (and re-reads on SIGHUP): a copy of config-plain.toml, later of
# config-creds.toml (the appliance's own credentials for Docker Hub) and back
printf '%s\n' "$SEED_PASS" >"$RC/seed.password"
chmod 600 "$RC/seed.password"
render_config "$RC/config-plain.toml" "$RC/state" "$PKI/ca.crt"
render_config "$RC/config-creds.toml" "$RC/state" "$PKI/ca.crt" "$RC/seed.password"
cp "$RC/config-plain.toml" "$RC/config.toml"

config_rejects_unknown_key() {
    { cat "$RC/config.toml"; printf '\n[bogus]\nkey = 1\n'; } >"$RC/bad.toml"
    local rc=0
    app timeout 10 "$BIN" serve --config "$RC/bad.toml" 2>"$RC/bad.err" || rc=$?
    cat "$RC/bad.err"
    echo "exit code $rc"
    [[ $rc != 0 && $rc != 124 ]] || return 1
    grep -q bogus "$RC/bad.err" || { echo "the error does not name the unknown key 'bogus'"; return 1; }
}
run_check "config with an unknown table is rejected, naming it" config_rejects_unknown_key

ca_cert() {
    app "$BIN" ca cert --config "$RC/config.toml" >"$W/regcache-ca.crt"
    openssl x509 -in "$W/regcache-ca.crt" -noout -subject -fingerprint -sha256 -ext basicConstraints
    app "$BIN" ca cert --config "$RC/config.toml" | cmp - "$W/regcache-ca.crt"
}
run_check "regcache ca cert prints a CA certificate (stable across calls)" ca_cert
[[ -s $W/regcache-ca.crt ]] || die "no CA certificate from regcache ca cert"

REGCACHE_PID=''
start_regcache() { # CONFIG LOGNAME
    local name=$2
    ip netns exec "$APP_NS" "$BIN" serve --config "$1" >"$LOGS/$name.access.log" 2>"$LOGS/$name.log" </dev/null 9<&- &
    REGCACHE_PID=$!
    PIDS+=("$REGCACHE_PID"); PIDNAME[$REGCACHE_PID]=$name
    ACCESS_LOG=$LOGS/$name.access.log
    wait_for "regcache 'listening for https'" "$REGCACHE_PID" 150 0.2 grep -q 'listening for https on' "$LOGS/$name.log"
}
stop_regcache() { # run with run_check_here: it reaps the process
    local t=$SECONDS rc=0 i
    kill -TERM "$REGCACHE_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$REGCACHE_PID" || break; sleep 0.2; done
    if alive "$REGCACHE_PID"; then
        echo "regcache still running 10 s after SIGTERM"
        stop_pid "$REGCACHE_PID"; forget_pid "$REGCACHE_PID"; return 1
    fi
    wait "$REGCACHE_PID" || rc=$?
    forget_pid "$REGCACHE_PID"
    echo "exited with $rc after $((SECONDS - t)) s"
    [[ $rc == 0 ]]
}

start_regcache "$RC/config.toml" regcache || die "regcache did not start (logs/regcache.log)"
grep -E 'listening for (dns|https|admin) on' "$LOGS/regcache.log" | sed 's/^/INFO: /' | cut -c1-200
info "regcache up after $((SECONDS - T0)) s"

listening_lines() {
    local what
    for what in dns https admin; do grep -q "listening for $what on" "$LOGS/regcache.log" || { echo "no 'listening for $what on'"; return 1; }; done
}
admin_checks() {
    http_code_in 200 app curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/healthz"
    app curl -sSf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/ca.crt" >"$W/admin-ca.crt"
    diff <(openssl x509 -in "$W/admin-ca.crt" -noout -fingerprint -sha256) \
        <(openssl x509 -in "$W/regcache-ca.crt" -noout -fingerprint -sha256)
}
run_check "logs 'listening for dns|https|admin on ADDR'" listening_lines
run_check "admin /healthz is 200 and /ca.crt is the CA from 'ca cert'" admin_checks

# ---------------------------------------------------------------------------------------------------
# the client namespace: trust the appliance CA only

setup_client_trust() {
    local d=/etc/netns/$CLI_NS host
    mkdir -p "$d/docker/certs.d"
    cp -a /etc/containers "$d/containers"
    mkdir -p "$d/containers/certs.d"
    for host in "${INTERCEPTED[@]}"; do
        mkdir -p "$d/docker/certs.d/$host" "$d/containers/certs.d/$host"
        cp "$W/regcache-ca.crt" "$d/docker/certs.d/$host/ca.crt"
        cp "$W/regcache-ca.crt" "$d/containers/certs.d/$host/ca.crt"
    done
    cp -a /etc/ssl "$d/ssl"
    cat "$W/regcache-ca.crt" >>"$d/ssl/certs/ca-certificates.crt"
}
setup_client_trust

# ---------------------------------------------------------------------------------------------------
# 1. DNS

dig_cli() { cli dig +time=2 +tries=1 -p 53 "@$APP_IP" "$@"; }
# dns_expect NAME TYPE STATUS ANSWERS [DIG-OPTS...]: status and the sorted data of TYPE records
dns_expect() {
    local name=$1 type=$2 want_status=$3 want=$4 out status got; shift 4
    out=$(dig_cli "$@" "$name" "$type")
    echo "$out"
    status=$(sed -n 's/.*status: \([A-Z]*\),.*/\1/p' <<<"$out")
    got=$(awk -v t="$type" '$0 !~ /^;/ && $4 == t {print $5}' <<<"$out" | sort | paste -sd' ')
    expect_eq "$status" "$want_status" "status of $name $type"
    expect_eq "$got" "$want" "$type records of $name"
    if [[ -z $want ]]; then grep -q 'ANSWER: 0,' <<<"$out" || { echo "answer section not empty"; return 1; }; fi
}
dns_ttl() {
    local out
    out=$(dig_cli +noall +answer ghcr.io A)
    echo "$out"
    expect_eq "$(awk '{print $2; exit}' <<<"$out")" 60 "ttl of ghcr.io A"
}
aaaa_queries_upstream() { grep -cE "query\[AAAA\] ($(IFS='|'; echo "${INTERCEPTED[*]//./\\.}")) " "$LOGS/dnsmasq.log" || true; }

aaaa_before=$(aaaa_queries_upstream)
for host in "${INTERCEPTED[@]}"; do
    run_check "dns: $host A -> $APP_IP" dns_expect "$host" A NOERROR "$APP_IP"
    run_check "dns: $host AAAA -> NOERROR, no records" dns_expect "$host" AAAA NOERROR ""
done
run_check "dns: GHCR.IO (upper case) A -> $APP_IP" dns_expect GHCR.IO A NOERROR "$APP_IP"
run_check "dns: intercepted answer carries ttl 60" dns_ttl
run_check "dns: $OTHER_HOST forwarded -> $OTHER_IP" dns_expect "$OTHER_HOST" A NOERROR "$OTHER_IP"
run_check "dns: www.$OTHER_HOST CNAME chain forwarded -> $OTHER_IP" dns_expect "www.$OTHER_HOST" A NOERROR "$OTHER_IP"
run_check "dns: unknown name nothing.nx.test -> NXDOMAIN" dns_expect nothing.nx.test A NXDOMAIN ""
run_check "dns: ghcr.io A over TCP -> $APP_IP" dns_expect ghcr.io A NOERROR "$APP_IP" +tcp
run_check "dns: $OTHER_HOST over TCP forwarded -> $OTHER_IP" dns_expect "$OTHER_HOST" A NOERROR "$OTHER_IP" +tcp
sleep 0.5
aaaa_not_leaked() {
    local after
    after=$(aaaa_queries_upstream)
    echo "AAAA queries for intercepted names seen by the upstream resolver: before $aaaa_before, after $after"
    [[ $after == "$aaaa_before" ]]
}
run_check "dns: AAAA for intercepted names is not forwarded upstream" aaaa_not_leaked
info "dns: sub.ghcr.io A -> $(dig_cli +short sub.ghcr.io A | paste -sd' ') (status $(dig_cli sub.ghcr.io A | sed -n 's/.*status: \([A-Z]*\),.*/\1/p'))"

# ---------------------------------------------------------------------------------------------------
# TLS and isolation

tls_ok() { # HOST: the appliance serves a certificate for HOST that chains to its CA
    local code
    code=$(cli_curl -o /dev/null -w '%{http_code}' "https://$1/v2/")
    echo "HTTP $code from https://$1/v2/"
}
for host in "${INTERCEPTED[@]}"; do run_check "tls: $host certificate verifies against the appliance CA" tls_ok "$host"; done
no_tls_for_other_names() {
    if cli_curl --max-time 10 -o /dev/null --resolve "$OTHER_HOST:443:$APP_IP" "https://$OTHER_HOST/"; then
        echo "the appliance served a trusted certificate for $OTHER_HOST"; return 1
    fi
}
run_check "tls: no trusted certificate for a non-registry name ($OTHER_HOST)" no_tls_for_other_names
client_isolated() {
    if cli curl -sS --max-time 3 -k -o /dev/null --resolve "$GHCR_HOST:443:$GHCR_IP" "https://$GHCR_HOST/v2/"; then
        echo "client reached $GHCR_IP directly"; return 1
    fi
}
run_check "isolation: the client cannot reach upstream addresses" client_isolated
info "client sees on https://$HUB_HOST/v2/: $(cli_curl -o /dev/null -w '%{http_code} www-authenticate=%header{www-authenticate}' "https://$HUB_HOST/v2/" 2>&1)"

# ---------------------------------------------------------------------------------------------------
# 2. dockerd

D=$W/docker
mkdir -p "$D/data" "$D/exec"
echo '{"max-concurrent-downloads": 3, "log-level": "info"}' >"$D/daemon.json"
# `ip netns exec` remounts /sys without the cgroup mounts; re-create the root namespace's set.
awk '$2 ~ "^/sys/fs/cgroup" && ($3 == "tmpfs" || $3 == "cgroup" || $3 == "cgroup2") {
        printf "mkdir -p %s && mount -n -t %s -o %s %s %s\n", $2, $3, $4, $1, $2 }' /proc/self/mounts >"$D/cgroups.sh"
export DOCKER_HOST=unix://$D/docker.sock
DOCKERD_PID='' DOCKER_OK=0
# start_dockerd LOGNAME [SHELL-COMMANDS]: dockerd reads the system trust store (/etc/ssl) once, at start;
# SHELL-COMMANDS (mounts) run in its mount namespace before it
start_dockerd() {
    local pre=${2:-}
    bg "$1" "$CLI_NS" sh -c ". '$D/cgroups.sh' && $HERMETIC_MOUNTS && ${pre:+$pre && }exec dockerd --data-root '$D/data' \
        --exec-root '$D/exec' --pidfile '$D/docker.pid' -H 'unix://$D/docker.sock' --config-file '$D/daemon.json' \
        --iptables=false --ip-forward=false --bridge=none --storage-driver=vfs"
    DOCKERD_PID=$!
    DOCKER_OK=0
    if wait_for "dockerd" "$DOCKERD_PID" 120 0.5 docker info; then DOCKER_OK=1; fi
    info "dockerd $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?') up after $((SECONDS - T0)) s"
}
stop_dockerd() {
    [[ -n $DOCKERD_PID ]] || return 0
    stop_pid "$DOCKERD_PID"; forget_pid "$DOCKERD_PID"
    DOCKERD_PID='' DOCKER_OK=0
}
start_dockerd dockerd

docker_pull() { # REF KEY
    docker rmi -f "$1" >/dev/null 2>&1 || true
    timeout 180 docker pull "$1" || return 1
    local repodigests
    repodigests=$(docker image inspect --format '{{join .RepoDigests " "}}' "$1") || return 1
    echo "RepoDigests: $repodigests"
    [[ " $repodigests " == *"@${DIGEST[$2]} "* ]] || { echo "pushed digest ${DIGEST[$2]} not in RepoDigests"; return 1; }
}
docker_pull_fresh() { # REF KEY: pull with nothing cached locally
    docker_pull "$@" || return 1
    docker rmi -f "$1" >/dev/null
}
# a token GET answered 200 by the realm host, from dockerd (its user agent starts with docker/)
DOCKER_TOKEN_RE="\"GET /token\\?[^\"]*\" 200 [0-9]+ \"[^\"]*\" \"docker/[^\"]*\" \"${AUTH_HOST//./\\.}\"\$"
docker_token_lines() { grep -cE "$DOCKER_TOKEN_RE" "$ACCESS_LOG" || true; }
dockerd_token_logged() {
    grep -E "$DOCKER_TOKEN_RE" "$ACCESS_LOG" | sed -n '1,3p' || true
    [[ $(docker_token_lines) -gt 0 ]] || { echo "no line matches /$DOCKER_TOKEN_RE/"; return 1; }
}
if ! want main; then
    :
elif [[ $DOCKER_OK == 1 ]]; then
    run_check "dockerd: pull $HUB_HOST/library/small:1" docker_pull_fresh "$HUB_HOST/library/small:1" small
    run_check "dockerd: pull small:1 (short name)" docker_pull_fresh small:1 small
    run_check "dockerd: pull docker.io/library/alpine-ish:latest (OCI index)" docker_pull docker.io/library/alpine-ish:latest alpine
    run_check "dockerd: pull ghcr.io/acme/tool:v1" docker_pull ghcr.io/acme/tool:v1 tool
    run_check "dockerd: pull nvcr.io/nvidia/tiny:25.03" docker_pull nvcr.io/nvidia/tiny:25.03 tiny
    run_check "dockerd: fetched its Docker Hub token from $AUTH_HOST through the appliance (access log)" dockerd_token_logged
else
    run_check "dockerd starts in the client namespace (logs/dockerd.log)" false
fi

# ---------------------------------------------------------------------------------------------------
# 3. skopeo and 4. podman in the client namespace

cli_skopeo() { isolated "$CLI_NS" timeout 300 skopeo "$@"; }
SKOPEO_OUT=$W/skopeo     # oci dirs of skopeo copy
SKOPEO_INSPECT_OPTS=()   # extra options for skopeo inspect (none: it also lists the tags, offline too)
skopeo_pull() { # REF KEY
    local got
    got=$(cli_skopeo inspect "${SKOPEO_INSPECT_OPTS[@]}" --format '{{.Digest}}' "docker://$1")
    expect_eq "$got" "${DIGEST[$2]}" "skopeo inspect digest of $1"
    rm -rf "${SKOPEO_OUT:?}/$2"; mkdir -p "$SKOPEO_OUT"
    cli_skopeo copy "docker://$1" "oci:$SKOPEO_OUT/$2:x"
}
if want main; then
run_check "skopeo: docker.io/library/small:1" skopeo_pull docker.io/library/small:1 small
run_check "skopeo: docker.io/library/alpine-ish:latest (OCI index)" skopeo_pull docker.io/library/alpine-ish:latest alpine
run_check "skopeo: ghcr.io/acme/tool:v1" skopeo_pull ghcr.io/acme/tool:v1 tool
run_check "skopeo: nvcr.io/nvidia/tiny:25.03" skopeo_pull nvcr.io/nvidia/tiny:25.03 tiny
fi

P=$W/podman
mkdir -p "$P/root" "$P/runroot" "$P/tmp"
podman_cli() {
    isolated "$CLI_NS" timeout 300 podman --root "$P/root" --runroot "$P/runroot" --tmpdir "$P/tmp" --storage-driver vfs \
        --cgroup-manager cgroupfs --events-backend file "$@"
}
podman_pull() { # REF KEY
    podman_cli pull "$1"
    local got
    got=$(podman_cli image inspect --format '{{.Digest}}' "$1")
    # for an index podman's .Digest is the index digest too (RepoDigests has both)
    expect_eq "$got" "${DIGEST[$2]}" "podman digest of $1"
}
if want main; then
run_check "podman: docker.io/library/small:1" podman_pull docker.io/library/small:1 small
run_check "podman: docker.io/library/alpine-ish:latest (OCI index)" podman_pull docker.io/library/alpine-ish:latest alpine
run_check "podman: ghcr.io/acme/tool:v1" podman_pull ghcr.io/acme/tool:v1 tool
run_check "podman: nvcr.io/nvidia/tiny:25.03" podman_pull nvcr.io/nvidia/tiny:25.03 tiny
fi

# ---------------------------------------------------------------------------------------------------
# 5. push pass-through

push_through() {
    cli_skopeo copy --preserve-digests "oci:$W/images/pushed:1" "docker://ghcr.io/acme/pushed:1"
    local got
    got=$(app_curl -f -o /dev/null -w '%header{docker-content-digest}' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "https://$GHCR_HOST/v2/acme/pushed/manifests/1")
    expect_eq "$got" "${DIGEST[pushed]}" "upstream digest of acme/pushed:1"
    local kind blob _
    while read -r kind blob _; do
        [[ $kind == blob ]] || continue
        http_code_in 200 app_curl -I "https://$GHCR_HOST/v2/acme/pushed/blobs/$blob"
    done <"$W/images/pushed/push-plan"
}
want main && run_check "push: skopeo copy to ghcr.io/acme/pushed:1 through the appliance lands upstream" push_through

# ---------------------------------------------------------------------------------------------------
# anonymous clients must not read a private repository

anonymous_private_denied() {
    if cli_skopeo inspect --raw docker://docker.io/e2eprivate/secret:1; then
        echo "anonymous skopeo read docker.io/e2eprivate/secret:1 through the appliance"; return 1
    fi
}
private_read_with_credentials() {
    local got
    got=$(cli_skopeo inspect --creds "$SEED_USER:$SEED_PASS" --format '{{.Digest}}' docker://docker.io/e2eprivate/secret:1)
    expect_eq "$got" "${DIGEST[private]}" "digest of docker.io/e2eprivate/secret:1 read with credentials"
}
if want main; then
run_check "private: anonymous skopeo cannot read docker.io/e2eprivate/secret:1" anonymous_private_denied
run_check "private: skopeo with $SEED_USER's credentials reads docker.io/e2eprivate/secret:1 (digest as pushed)" \
    private_read_with_credentials
run_check "private: anonymous skopeo still cannot read it after that authorised read" anonymous_private_denied
fi

# ---------------------------------------------------------------------------------------------------
# content cache: 8 concurrent cold GETs of one blob reach the upstream once

# GETs of nvidia/big's blob DIGEST in the nvcr.io upstream's own request log (distribution logs one
# "response completed" line per request at level info, fields sorted: method before uri)
nvcr_blob_gets() {
    grep -cE "msg=\"response completed[^\"]*\" .*http\\.request\\.method=GET .*http\\.request\\.uri=\"?/v2/nvidia/big/blobs/$1\"?( |\$)" \
        "$LOGS/upstream-nvcr.log" || true
}
coalesced_fill() {
    local url="https://$NVCR_HOST/v2/nvidia/big/blobs/$BIG_DIGEST" dir=$W/coalesce i code xc sum bad=0 misses=0 n
    mkdir -p "$dir"
    expect_eq "$(nvcr_blob_gets "$BIG_DIGEST")" 0 "upstream GETs of the $BIG_MIB MiB blob before the test"
    # one shell in CLI starts all 8, so they arrive within milliseconds; bodies are hashed on the fly
    cli bash -c 'for i in 1 2 3 4 5 6 7 8; do
            { curl -sS --max-time 120 --cacert "$1" -D "$2/headers.$i" -o - "$3" | sha256sum >"$2/sum.$i"; } 2>"$2/err.$i" &
        done
        wait' coalesce "$W/regcache-ca.crt" "$dir" "$url"
    for i in 1 2 3 4 5 6 7 8; do
        code=$(awk 'NR == 1 {print $2}' "$dir/headers.$i")
        xc=$(awk 'tolower($1) == "x-cache:" {print $2}' "$dir/headers.$i" | tr -d '\r')
        sum=sha256:$(cut -d' ' -f1 "$dir/sum.$i")
        echo "GET $i: HTTP $code x-cache ${xc:-none} body $sum $(cat "$dir/err.$i")"
        [[ $code == 200 && $sum == "$BIG_DIGEST" ]] || bad=$((bad + 1))
        [[ $xc == MISS ]] && misses=$((misses + 1))
    done
    # the upstream logs a request once its response is complete
    for ((i = 0; i < 30; i++)); do [[ $(nvcr_blob_gets "$BIG_DIGEST") -ge 1 ]] && break; sleep 0.1; done
    sleep 0.3
    echo "upstream log lines for the blob:"
    grep -F "/v2/nvidia/big/blobs/$BIG_DIGEST" "$LOGS/upstream-nvcr.log" | grep -oE 'http\.request\.method=[A-Z]+|http\.response\.status=[0-9]+|http\.response\.written=[0-9]+' | paste -sd' ' || true
    expect_eq "$bad" 0 "responses that are not 200 with a body hashing to the digest"
    expect_eq "$misses" 1 "responses with x-cache: MISS"
    expect_eq "$(nvcr_blob_gets "$BIG_DIGEST")" 1 "GETs of the blob served by the upstream (its own log)"
    # and once more, now that it is stored
    n=$(cli_curl -o /dev/null -w '%{http_code} %header{x-cache}' "$url")
    expect_eq "$n" "200 HIT" "a 9th GET after the fill"
    expect_eq "$(nvcr_blob_gets "$BIG_DIGEST")" 1 "upstream GETs of the blob after the 9th GET"
}
want main && run_check "cache: 8 concurrent cold GETs of a $BIG_MIB MiB blob: all bodies match the digest, the upstream served it once" coalesced_fill

# ---------------------------------------------------------------------------------------------------
# content cache and a Basic-auth upstream (quay.io): cached objects only for clients it accepts

QUAY_REF=$QUAY_HOST/corp/app:1
quay_blob() { awk '$1 == "blob" {print $2; exit}' "$W/images/quay/push-plan"; }
# quay_get CREDS PATH: GET through the appliance (CREDS user:password, or - for none); prints
# "HTTP-CODE X-CACHE WWW-AUTHENTICATE", body in $W/quay-body
quay_get() {
    local creds=()
    [[ $1 != - ]] && creds=(-u "$1")
    rm -f "$W/quay-body"
    cli_curl "${creds[@]}" -o "$W/quay-body" -w '%{http_code} %header{x-cache} %header{www-authenticate}' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "https://$QUAY_HOST$2"
}
body_is() { # DIGEST: $W/quay-body hashes to DIGEST
    [[ -f $W/quay-body && sha256:$(sha256sum <"$W/quay-body" | cut -d' ' -f1) == "$1" ]]
}
basic_pull_with_credentials() {
    local got
    got=$(cli_skopeo inspect --creds "$QUAY_USER:$QUAY_PASS" --format '{{.Digest}}' "docker://$QUAY_REF")
    expect_eq "$got" "${DIGEST[quay]}" "skopeo inspect --creds digest of $QUAY_REF"
    rm -rf "$W/skopeo/quay"; mkdir -p "$W/skopeo"
    cli_skopeo copy --src-creds "$QUAY_USER:$QUAY_PASS" "docker://$QUAY_REF" "oci:$W/skopeo/quay:x"
}
basic_cached_for_owner() { # the right credentials get the layer and the manifest by digest from the cache
    local blob out
    blob=$(quay_blob)
    out=$(quay_get "$QUAY_USER:$QUAY_PASS" "/v2/corp/app/blobs/$blob")
    echo "blob $blob with credentials: $out"
    [[ $out == "200 HIT"* ]] && body_is "$blob" || { echo "want 200, x-cache HIT and the blob"; return 1; }
    out=$(quay_get "$QUAY_USER:$QUAY_PASS" "/v2/corp/app/manifests/${DIGEST[quay]}")
    echo "manifest ${DIGEST[quay]} with credentials: $out"
    [[ $out == "200 HIT"* ]] && body_is "${DIGEST[quay]}" || { echo "want 200, x-cache HIT and the manifest"; return 1; }
}
# basic_refused CREDS WANT-CODES [unauthorized]: skopeo inspect fails (saying 401/unauthorized with the 3rd
# argument), and GETs of the cached layer and manifest by digest answer one of WANT-CODES, without the content
basic_refused() {
    local creds=() want=$2 blob out path digest log=$W/quay-skopeo.$RANDOM.log
    [[ $1 != - ]] && creds=(--creds "$1")
    if cli_skopeo inspect "${creds[@]}" --format '{{.Digest}}' "docker://$QUAY_REF" >"$log" 2>&1; then
        cat "$log"; echo "skopeo read $QUAY_REF"; return 1
    fi
    echo "skopeo inspect: $(tail -n 1 "$log")"
    if [[ ${3:-} == unauthorized ]]; then
        grep -qiE 'unauthorized|401|authentication required' "$log" || { echo "skopeo's error does not say unauthorized"; return 1; }
    fi
    blob=$(quay_blob)
    for path in "blobs/$blob" "manifests/${DIGEST[quay]}"; do
        digest=${path#*/}
        out=$(quay_get "$1" "/v2/corp/app/$path")
        echo "GET /v2/corp/app/$path: $out"
        [[ " $want " == *" ${out%% *} "* ]] || { echo "want HTTP $want"; return 1; }
        if body_is "$digest"; then echo "the body is the cached content"; return 1; fi
    done
}
QUAY_WRONG=$QUAY_USER:wrong-$QUAY_PASS
if want main; then
run_check "basic auth: skopeo --creds copies $QUAY_REF through the appliance (digest as pushed)" basic_pull_with_credentials
run_check "basic auth: without credentials skopeo inspect fails (unauthorized); cached layer and manifest GETs get 401" \
    basic_refused - 401 unauthorized
run_check "basic auth: with a wrong password skopeo inspect fails (unauthorized); cached layer and manifest GETs get 401" \
    basic_refused "$QUAY_WRONG" 401 unauthorized
run_check "basic auth: the right credentials get the layer and the manifest from the cache (x-cache HIT)" basic_cached_for_owner
fi

# ---------------------------------------------------------------------------------------------------
# trust: attacks (scripts/e2e/trust.sh), against this appliance with quay.io's private content cached

if want attacks; then trust_attacks; fi

# sections 6 to 9: main checks only
if want main; then

# ---------------------------------------------------------------------------------------------------
# 6. dockerd's trust for Docker Hub names: FINDING lines, each also a check asserting what was found.
# dockerd is restarted with the host's own /etc/ssl, so regcache's CA is NOT in its system trust store,
# only in certs.d/<host>/ca.crt for the intercepted hosts (registry-1.docker.io, auth.docker.io, docker.io,
# index.docker.io, ...). Found: a registry-1.docker.io/... name is an ordinary registry to dockerd, which
# uses certs.d/registry-1.docker.io (and reaches the realm auth.docker.io through the appliance); Docker Hub
# names (docker.io/..., short names) go to the official index, which uses only the system store.

attempt() { # LOG FUNC ARGS...: runs FUNC under errexit (like run_check), output to LOG; prints succeeds|fails
    local log=$1 rc; shift
    set +e
    ( set -e; "$@" ) >"$log" 2>&1
    rc=$?
    set -e
    if [[ $rc == 0 ]]; then echo succeeds; else echo fails; fi
}
outcome_is() { # GOT WANT LOG [ERE]: GOT is WANT, and LOG has a line matching ERE
    tail -n 12 "$3"
    expect_eq "$1" "$2" "outcome"
    [[ -z ${4:-} ]] || grep -qE "$4" "$3" || { echo "no line matching /$4/ in ${3#"$W"/}"; return 1; }
}
if [[ $DOCKER_OK == 1 ]]; then
    stop_dockerd
    mv "/etc/netns/$CLI_NS/ssl" "$W/client-ssl"     # back below; cleanup removes /etc/netns/$CLI_NS anyway
    start_dockerd dockerd-certsd-only
    if [[ $DOCKER_OK == 1 ]]; then
        NOSTORE="regcache's CA only in certs.d, not in the system store"
        tokens_before=$(docker_token_lines)
        A_LOG=$LOGS/finding-certsd-registry-1.log
        a=$(attempt "$A_LOG" docker_pull_fresh "$HUB_HOST/library/small:1" small)
        tokens_after=$(docker_token_lines)
        a_token=no
        [[ $tokens_after -gt $tokens_before ]] && a_token=yes
        B_LOG=$LOGS/finding-certsd-docker.io.log
        b=$(attempt "$B_LOG" docker_pull_fresh docker.io/library/small:1 small)
        b_err=$(grep -oE 'x509: .*' "$B_LOG" | head -n 1 || true)
        say "FINDING: $NOSTORE: dockerd pull of $HUB_HOST/library/small:1 $a (logs/${A_LOG##*/})"
        say "FINDING: ... and for it dockerd fetched a token from $AUTH_HOST through the appliance: $a_token"
        say "FINDING: $NOSTORE: dockerd pull of docker.io/library/small:1 $b${b_err:+ ($b_err)} (logs/${B_LOG##*/})"
        run_check "dockerd, $NOSTORE: $HUB_HOST/library/small:1 pulls (certs.d/$HUB_HOST is used)" \
            outcome_is "$a" succeeds "$A_LOG"
        run_check "dockerd, $NOSTORE: the $HUB_HOST pull got its token from $AUTH_HOST through the appliance" \
            expect_eq "$a_token" yes "new dockerd token GET in the access log ($tokens_before -> $tokens_after lines)"
        run_check "dockerd, $NOSTORE: docker.io/library/small:1 fails with an x509 error (Docker Hub names use only the system store)" \
            outcome_is "$b" fails "$B_LOG" 'x509: '
    else
        run_check "dockerd restarts without regcache's CA in the system store (logs/dockerd-certsd-only.log)" false
    fi
    stop_dockerd
    mv "$W/client-ssl" "/etc/netns/$CLI_NS/ssl"
else
    skip "dockerd trust for Docker Hub names: dockerd did not start"
fi

# ---------------------------------------------------------------------------------------------------
# 6b. mirror mode: clients that keep their own DNS and do not trust regcache's CA pull Docker Hub (and,
# with containerd's ?ns=, other registries') content through the plain-HTTP mirror listener APP_IP:80.
# They run in a mount namespace with a resolv.conf whose nameserver does not answer, the root
# namespace's /etc/ssl (without regcache's CA) and empty /etc/docker and /etc/containers: the mirror is
# their only way to the content.

M=$W/mirror
mkdir -p "$M/empty" "$M/hosts"
echo "nameserver 127.0.0.9" >"$M/resolv.conf"
cp -a /etc/ssl "$M/ssl"
MIRROR_MOUNTS="mount -n --bind '$M/resolv.conf' /etc/resolv.conf && mount -n --bind '$M/ssl' /etc/ssl \
&& mount -n --bind '$M/empty' /etc/docker && mount -n --bind '$M/empty' /etc/containers"
mirror_env() { ip netns exec "$CLI_NS" sh -c "$HERMETIC_MOUNTS && $MIRROR_MOUNTS"' && exec "$@"' sh "$@"; }
mirror_env_is_blind() {
    if mirror_env timeout 20 getent hosts "$HUB_HOST"; then echo "$HUB_HOST resolves"; return 1; fi
    if mirror_env curl -sS --max-time 10 -o /dev/null --resolve "$HUB_HOST:443:$APP_IP" "https://$HUB_HOST/v2/"; then
        echo "TLS to the appliance verifies"; return 1
    fi
    local pem
    pem=$(sed -n 2p "$W/regcache-ca.crt")
    if mirror_env grep -rlF "$pem" /etc/ssl /etc/docker /etc/containers; then echo "regcache's CA found there"; return 1; fi
    echo "no DNS for $HUB_HOST, no trust in the appliance's certificate, regcache's CA in none of /etc/ssl, /etc/docker, /etc/containers"
}
# the appliance's TLS handshakes (every outcome), from /metrics
tls_handshakes() {
    app curl -sSf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^regcache_tls_handshakes_total/ {n += $NF} END {print n + 0}'
}
# mirror_pull_logged FUNC ARGS... -- ERE...: FUNC pulls; the access-log lines it added match every ERE,
# and the appliance counted no TLS handshake meanwhile
mirror_pull_logged() {
    local a hs0 hs1 new re args=()
    while [[ $1 != -- ]]; do args+=("$1"); shift; done
    shift
    a=$(wc -l <"$ACCESS_LOG") hs0=$(tls_handshakes)
    "${args[@]}"
    sleep 0.3
    hs1=$(tls_handshakes)
    new=$(tail -n "+$((a + 1))" "$ACCESS_LOG")
    echo "access log lines of the pull:"; sed -n '1,12p' <<<"$new"
    expect_eq "$hs1" "$hs0" "TLS handshakes counted by the appliance during the pull"
    for re in "$@"; do grep -qE "$re" <<<"$new" || { echo "no access-log line of the pull matches /$re/"; return 1; }; done
}
CLI_IP_RE=${CLI_IP//./\\.}
MIRROR_HUB_RE=" \"registry-1\\.docker\\.io\"\$"

run_check "mirror: the mirror clients' namespace has no DNS for registry names and no trust in regcache's CA" mirror_env_is_blind
D=$M/docker
mkdir -p "$D/data" "$D/exec"
cp "$W/docker/cgroups.sh" "$D/"
printf '{"registry-mirrors": ["http://%s"], "max-concurrent-downloads": 3, "log-level": "info"}\n' "$APP_IP" >"$D/daemon.json"
export DOCKER_HOST=unix://$D/docker.sock
start_dockerd dockerd-mirror "$MIRROR_MOUNTS"
if [[ $DOCKER_OK == 1 ]]; then
    run_check "mirror: dockerd with registry-mirrors [\"http://$APP_IP\"] pulls small:1 (digest as pushed; access log: host registry-1.docker.io, no TLS handshake)" \
        mirror_pull_logged docker_pull_fresh small:1 small -- \
        "^$CLI_IP_RE - .*\"(GET|HEAD) /v2/library/small/manifests/[^ ]+ HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"docker/[^\"]*\"$MIRROR_HUB_RE" \
        "^$CLI_IP_RE - .*\"GET /v2/library/small/blobs/sha256:[0-9a-f]{64} HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"docker/[^\"]*\"$MIRROR_HUB_RE"
    # containerd (ctr) against the containerd this dockerd runs, with hosts.toml mirrors (?ns=REGISTRY)
    CTR_SOCK=$D/exec/containerd/containerd.sock
    for h in docker.io ghcr.io; do
        server=https://$h
        [[ $h == docker.io ]] && server=https://$HUB_HOST
        mkdir -p "$M/hosts/$h"
        printf 'server = "%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$server" "$APP_IP" >"$M/hosts/$h/hosts.toml"
    done
    ctr_pull() { # REF KEY
        local got
        mirror_env timeout 180 ctr --address "$CTR_SOCK" --namespace rce2e images pull --hosts-dir "$M/hosts" \
            --platform linux/amd64 --snapshotter native "$1"
        got=$(mirror_env ctr --address "$CTR_SOCK" --namespace rce2e images ls | awk -v r="$1" '$1 == r {print $3}')
        expect_eq "$got" "${DIGEST[$2]}" "ctr's digest of $1"
    }
    if [[ -S $CTR_SOCK ]]; then
        run_check "mirror: ctr --hosts-dir (hosts.toml [host.\"http://$APP_IP\"]) pulls docker.io/library/small:1 (?ns=docker.io, no TLS)" \
            mirror_pull_logged ctr_pull docker.io/library/small:1 small -- \
            "^$CLI_IP_RE - .*\"GET /v2/library/small/blobs/sha256:[0-9a-f]{64}\\?ns=docker\\.io HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"containerd/[^\"]*\"$MIRROR_HUB_RE"
        run_check "mirror: ctr --hosts-dir pulls ghcr.io/acme/tool:v1 (?ns=ghcr.io routes to ghcr.io, no TLS)" \
            mirror_pull_logged ctr_pull ghcr.io/acme/tool:v1 tool -- \
            "^$CLI_IP_RE - .*\"GET /v2/acme/tool/blobs/sha256:[0-9a-f]{64}\\?ns=ghcr\\.io HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"containerd/[^\"]*\" \"ghcr\\.io\"\$"
    else
        run_check "mirror: dockerd's containerd socket at ${CTR_SOCK#"$W"/} (for ctr)" false
    fi
else
    run_check "mirror: dockerd starts with registry-mirrors (logs/dockerd-mirror.log)" false
fi
stop_dockerd

# ---------------------------------------------------------------------------------------------------
# 6c. client onboarding: scripts/client-setup.sh in the client namespace, against the admin listener

ONBOARD=$W/onboard
# The fingerprint comes from the appliance itself (its CLI and start log), not from the HTTP download.
onboard_fp() { app "$BIN" ca cert --fingerprint --config "$RC/config.toml"; }
onboard_dry_run() {
    local out want fp regs h changed rc=0
    touch "$W/onboard.marker"
    cli bash "$REPO/scripts/client-setup.sh" --dry-run --port "$ADMIN_PORT" "$APP_IP" || rc=$?
    expect_eq "$rc" 64 "exit code without --fingerprint (refused)"
    out=$(cli bash "$REPO/scripts/client-setup.sh" --fingerprint "$(onboard_fp)" --dry-run --port "$ADMIN_PORT" "$APP_IP")
    echo "$out"
    want=$(openssl x509 -in "$W/regcache-ca.crt" -noout -fingerprint -sha256 | sed 's/^.*=//')
    expect_eq "$(sed -n 's/.*CA fingerprint (SHA-256): *//p' "$LOGS/regcache.log" | head -n 1)" "$want" "CA fingerprint in regcache's start log"
    fp=$(sed -n 's/^CA fingerprint: *//p' <<<"$out")
    expect_eq "$fp" "$want" "CA fingerprint printed (openssl x509 -fingerprint -sha256 of regcache's CA)"
    regs=$(sed -n 's/^registries: *//p' <<<"$out")
    for h in "${INTERCEPTED[@]}"; do [[ " $regs " == *" $h "* ]] || { echo "$h not among the registries listed"; return 1; }; done
    grep -qx 'dry run: nothing was changed' <<<"$out" || { echo "no 'dry run: nothing was changed'"; return 1; }
    grep -qx "+ write /etc/docker/certs.d/$HUB_HOST/ca.crt" <<<"$out" || { echo "no planned write of docker's certs.d/$HUB_HOST/ca.crt"; return 1; }
    changed=$(find "/etc/netns/$CLI_NS" /etc/docker /etc/containers /etc/resolv.conf /usr/local/share/ca-certificates \
        -newer "$W/onboard.marker" 2>/dev/null | head -n 5 || true)
    [[ -z $changed ]] || { echo "changed by the dry run: $changed"; return 1; }
}
onboard_root() {
    local r=$ONBOARD h f
    mkdir -p "$r/etc/containerd" "$r/usr/local/share/ca-certificates"
    echo "nameserver 192.0.2.53" >"$r/etc/resolv.conf"
    cli bash "$REPO/scripts/client-setup.sh" --fingerprint "$(onboard_fp)" --port "$ADMIN_PORT" --root "$r" "$APP_IP"
    echo "--- files under the root:"; (cd "$r" && find . -type f | sort | sed -n '1,60p')
    for h in "${INTERCEPTED[@]}"; do
        for f in "etc/docker/certs.d/$h/ca.crt" "etc/containers/certs.d/$h/ca.crt" "etc/containerd/certs.d/$h/regcache-ca.crt"; do
            cmp "$W/regcache-ca.crt" "$r/$f" || { echo "$f is not regcache's CA"; return 1; }
        done
    done
    grep -qx "server = \"https://$HUB_HOST\"" "$r/etc/containerd/certs.d/docker.io/hosts.toml" \
        || { echo "containerd's hosts.toml for docker.io does not name $HUB_HOST"; return 1; }
    cmp "$W/regcache-ca.crt" "$r/usr/local/share/ca-certificates/regcache.crt"
    echo "--- etc/resolv.conf:"; cat "$r/etc/resolv.conf"
    expect_eq "$(grep '^nameserver' "$r/etc/resolv.conf" | paste -sd' ')" "nameserver $APP_IP" "nameservers in resolv.conf"
    expect_eq "$(cat "$r/etc/resolv.conf.before-regcache")" "nameserver 192.0.2.53" "resolv.conf.before-regcache"
}
run_check "onboarding: client-setup.sh refuses without --fingerprint; with the fingerprint from regcache ca cert --fingerprint, --dry-run --port $ADMIN_PORT $APP_IP (in CLI) prints it and the intercepted registries, changes nothing" \
    onboard_dry_run
run_check "onboarding: client-setup.sh --fingerprint FP --root DIR writes certs.d ca.crt for docker and containers (registry-1.docker.io, docker.io, ...), containerd hosts.toml, the system-store CA and resolv.conf -> $APP_IP" \
    onboard_root

# ---------------------------------------------------------------------------------------------------
# 7. offline: every upstream process stopped (the registries, the token service, the CDN; dnsmasq and
# regcache stay). Clients with fresh state pull the images again by their unchanged names. Last, since
# nothing after this needs an upstream.

stop_upstreams() { # run with run_check_here: it reaps the processes
    local pid hp rc
    for pid in "$HUB_PID" "$GHCR_PID" "$NVCR_PID" "$QUAY_PID" "$AUTH_PID" "$CDN_PID"; do
        echo "stopping ${PIDNAME[$pid]} (pid $pid)"
        stop_pid "$pid"; forget_pid "$pid"
    done
    for hp in "${UPSTREAMS[@]}"; do
        rc=0
        app curl -sS --max-time 3 -k -o /dev/null --resolve "${hp%%:*}:443:${hp#*:}" "https://${hp%%:*}/" || rc=$?
        echo "${hp%%:*} (${hp#*:}): curl exit $rc"
        [[ $rc == 7 ]] || { echo "want curl exit 7 (connection refused)"; return 1; }
    done
}
# offline_evidence FUNC ARGS...: FUNC under errexit; when it fails, what regcache logged and answered
# while it ran follows its output (the access log last: what the client asked and got)
offline_evidence() {
    local a r rc
    a=$(wc -l <"$ACCESS_LOG") r=$(wc -l <"$LOGS/regcache.log")
    set +e
    ( set -e; "$@" )
    rc=$?
    set -e
    if [[ $rc != 0 ]]; then
        echo "--- regcache log while it ran (first 40 lines):"
        tail -n "+$((r + 1))" "$LOGS/regcache.log" | sed -n '1,40p' | cut -c1-400
        echo "--- access log while it ran (last 30 lines):"
        tail -n "+$((a + 1))" "$ACCESS_LOG" | tail -n 30
    fi
    return "$rc"
}
# since_offline FILE: its lines written after the upstreams were stopped
since_offline() { tail -n "+$((OFFLINE_LINE[$1] + 1))" "$1"; }
declare -A OFFLINE_LINE=()
OFFLINE_LINE[$ACCESS_LOG]=$(wc -l <"$ACCESS_LOG")
OFFLINE_LINE[$LOGS/regcache.log]=$(wc -l <"$LOGS/regcache.log")
run_check_here "offline: every upstream process stopped (registries, token service, CDN): connections refused" stop_upstreams

# dockerd with a fresh data root (regcache's CA back in its system store)
D=$W/docker-offline
mkdir -p "$D/data" "$D/exec"
cp "$W/docker/daemon.json" "$W/docker/cgroups.sh" "$D/"
export DOCKER_HOST=unix://$D/docker.sock
start_dockerd dockerd-offline
if [[ $DOCKER_OK == 1 ]]; then
    run_check "offline: dockerd (fresh data root) pulls docker.io/library/small:1" \
        offline_evidence docker_pull_fresh docker.io/library/small:1 small
    run_check "offline: dockerd pulls small:1 (short name)" offline_evidence docker_pull_fresh small:1 small
    run_check "offline: dockerd pulls docker.io/library/alpine-ish:latest (OCI index)" \
        offline_evidence docker_pull docker.io/library/alpine-ish:latest alpine
    run_check "offline: dockerd pulls ghcr.io/acme/tool:v1" offline_evidence docker_pull ghcr.io/acme/tool:v1 tool
    run_check "offline: dockerd pulls nvcr.io/nvidia/tiny:25.03" offline_evidence docker_pull nvcr.io/nvidia/tiny:25.03 tiny
    # by digest: no tag to resolve (dockerd resolves a tag with a HEAD of the manifest first)
    run_check "offline: dockerd pulls docker.io/library/small@digest" \
        offline_evidence docker_pull_fresh "docker.io/library/small@${DIGEST[small]}" small
    run_check "offline: dockerd pulls ghcr.io/acme/tool@digest" offline_evidence docker_pull "ghcr.io/acme/tool@${DIGEST[tool]}" tool
    run_check "offline: dockerd pulls nvcr.io/nvidia/tiny@digest" offline_evidence docker_pull "nvcr.io/nvidia/tiny@${DIGEST[tiny]}" tiny
else
    run_check "offline: dockerd starts with a fresh data root (logs/dockerd-offline.log)" false
fi
stop_dockerd

SKOPEO_OUT=$W/skopeo-offline
SKOPEO_INSPECT_OPTS=()   # without --no-tags: /tags/list is answered from the cached tag mappings
run_check "offline: skopeo (new oci dir) copies docker.io/library/small:1" offline_evidence skopeo_pull docker.io/library/small:1 small
run_check "offline: skopeo copies docker.io/library/alpine-ish:latest (OCI index)" \
    offline_evidence skopeo_pull docker.io/library/alpine-ish:latest alpine
run_check "offline: skopeo copies ghcr.io/acme/tool:v1" offline_evidence skopeo_pull ghcr.io/acme/tool:v1 tool
run_check "offline: skopeo copies nvcr.io/nvidia/tiny:25.03" offline_evidence skopeo_pull nvcr.io/nvidia/tiny:25.03 tiny

P=$W/podman-offline
mkdir -p "$P/root" "$P/runroot" "$P/tmp"
run_check "offline: podman (fresh --root) pulls docker.io/library/small:1" offline_evidence podman_pull docker.io/library/small:1 small
run_check "offline: podman pulls docker.io/library/alpine-ish:latest (OCI index)" \
    offline_evidence podman_pull docker.io/library/alpine-ish:latest alpine
run_check "offline: podman pulls ghcr.io/acme/tool:v1" offline_evidence podman_pull ghcr.io/acme/tool:v1 tool
run_check "offline: podman pulls nvcr.io/nvidia/tiny:25.03" offline_evidence podman_pull nvcr.io/nvidia/tiny:25.03 tiny

offline_paths_taken() { # the pulls above went through the offline rules, not fresh cache entries
    local host repo
    for host in "$HUB_HOST" "$GHCR_HOST" "$NVCR_HOST"; do
        since_offline "$LOGS/regcache.log" | grep -E "answering /v2/ locally.* registry=${host//./\\.}( |\$)" | sed -n 1p | cut -c1-300 \
            | grep . || { echo "no 'answering /v2/ locally' for $host"; return 1; }
    done
    for repo in library/small acme/tool nvidia/tiny; do
        since_offline "$LOGS/regcache.log" | grep -E "serving a stale tag.* repo=\"?$repo\"? " | sed -n 1p | cut -c1-300 \
            | grep . || { echo "no 'serving a stale tag' for $repo"; return 1; }
    done
}
run_check "offline: regcache answered /v2/ locally and served the tags stale (its log)" offline_paths_taken

# what must stay refused while the upstreams are down
run_check "offline: anonymous skopeo still cannot read docker.io/e2eprivate/secret:1 (cached by a read with credentials)" \
    offline_evidence anonymous_private_denied
run_check "offline: quay.io without credentials: skopeo fails; cached layer and manifest GETs are refused" \
    offline_evidence basic_refused - "401 403 502 503 504"
run_check "offline: quay.io with a wrong password: skopeo fails; cached layer and manifest GETs are refused" \
    offline_evidence basic_refused "$QUAY_WRONG" "401 403 502 503 504"
run_check "offline: quay.io with the credentials the upstream accepted: layer and manifest served from the cache" \
    offline_evidence basic_cached_for_owner

# Behaviour recorded, not asserted (INFO): cases the offline rules may not cover.
offline_info() { # WHAT LOGNAME FUNC ARGS...
    local what=$1 log=$LOGS/$2 outcome; shift 2
    outcome=$(attempt "$log" offline_evidence "$@")
    info "offline: $what: $outcome (logs/${log##*/})"
}
offline_info "skopeo inspect (with the tag list) of ghcr.io/acme/tool:v1" offline-inspect-tags.log \
    cli_skopeo inspect "docker://ghcr.io/acme/tool:v1"
offline_info "skopeo --creds inspect of $QUAY_REF (Basic auth; /v2/ is answered locally without a challenge)" \
    offline-quay-creds.log cli_skopeo inspect --creds "$QUAY_USER:$QUAY_PASS" --format '{{.Digest}}' "docker://$QUAY_REF"

# ---------------------------------------------------------------------------------------------------
# 8. access log

access_log_host() { # HOST: lines ending with the quoted host, and a 200 blob GET among them
    local n blobs
    n=$(grep -c "\"$1\"\$" "$ACCESS_LOG" || true)
    blobs=$(grep -cE "\"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64} HTTP/[0-9.]+\" 200 [0-9]+ .*\"$1\"\$" "$ACCESS_LOG" || true)
    echo "$n lines for $1, $blobs blob GETs with 200"
    grep "\"$1\"\$" "$ACCESS_LOG" | sed -n '1,5p' || true
    grep -E "\"GET /v2/[^ ]+/blobs/[^ ]+ HTTP/[0-9.]+\" [0-9]+ .*\"$1\"\$" "$ACCESS_LOG" | sed -n '1,5p' || true
    [[ $n -gt 0 && $blobs -gt 0 ]]
}
access_log_format() {
    local bad
    # the contract, exactly: $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
    # "$http_referer" "$http_user_agent" "$host"
    local re='^[0-9a-f.:]+ - [^ ]+ \[[^]]+\] "[^"]*" [0-9]{3} [0-9]+ "[^"]*" "[^"]*" "[^"]+"$'
    bad=$(grep -vcE "$re" "$ACCESS_LOG" || true)
    echo "$(wc -l <"$ACCESS_LOG") lines, $bad not in the contract format; first of them:"
    grep -vE "$re" "$ACCESS_LOG" | sed -n '1,3p' || true
    [[ $bad == 0 && -s $ACCESS_LOG ]]
}
run_check "access log: every line is '\$remote_addr - \$remote_user [\$time_local] \"\$request\" \$status \$body_bytes_sent \"\$http_referer\" \"\$http_user_agent\" \"\$host\"'" access_log_format
for host in "$HUB_HOST" "$GHCR_HOST" "$NVCR_HOST" "$QUAY_HOST"; do
    run_check "access log: lines for \"$host\" with 200 blob GETs" access_log_host "$host"
done
# ---------------------------------------------------------------------------------------------------
# 9. online again (the upstream processes restarted on their storage): the appliance's own credentials,
# switched in and out with SIGHUP; then /metrics after all the pulls

run_check_here "online: every upstream process restarted (same storage)" start_upstreams -online
D=$W/docker-online
mkdir -p "$D/data" "$D/exec"
cp "$W/docker/daemon.json" "$W/docker/cgroups.sh" "$D/"
export DOCKER_HOST=unix://$D/docker.sock
start_dockerd dockerd-online      # regcache's CA in its system store again, no login

# reload_regcache CONFIG: copies CONFIG over the file `serve` reads, SIGHUP, waits for "configuration reloaded"
reload_regcache() {
    local before i new
    before=$(wc -l <"$LOGS/regcache.log")
    cp "$1" "$RC/config.toml"
    kill -HUP "$REGCACHE_PID"
    for ((i = 0; i < 50; i++)); do
        new=$(tail -n "+$((before + 1))" "$LOGS/regcache.log")
        if grep -q 'configuration reloaded' <<<"$new"; then grep -E 'configuration reloaded|WARN' <<<"$new" | cut -c1-300; return 0; fi
        if grep -q 'config reload rejected' <<<"$new"; then echo "$new"; return 1; fi
        sleep 0.2
    done
    echo "no 'configuration reloaded' within 10 s of SIGHUP"; tail -n "+$((before + 1))" "$LOGS/regcache.log"; return 1
}
no_secret_logged() {
    local f hits=0
    for f in "$LOGS/regcache.log" "$ACCESS_LOG"; do
        if grep -qF "$SEED_PASS" "$f"; then echo "the seed password is in ${f#"$W"/}"; hits=1; fi
    done
    [[ $hits == 0 ]]
}
SKOPEO_OUT=$W/skopeo-online
SKOPEO_INSPECT_OPTS=()
run_check "credentials: SIGHUP with username = \"$SEED_USER\" + password_file for $HUB_HOST logs 'configuration reloaded'" \
    reload_regcache "$RC/config-creds.toml"
run_check "credentials: anonymous skopeo copies docker.io/e2eprivate/secret:1 with the appliance's credentials (digest as pushed)" \
    skopeo_pull docker.io/e2eprivate/secret:1 private
if [[ $DOCKER_OK == 1 ]]; then
    run_check "credentials: dockerd without login pulls docker.io/e2eprivate/secret:1 (digest as pushed)" \
        docker_pull_fresh docker.io/e2eprivate/secret:1 private
else
    run_check "online: dockerd starts (logs/dockerd-online.log)" false
fi
run_check "credentials: SIGHUP back to a config without credentials logs 'configuration reloaded'" \
    reload_regcache "$RC/config-plain.toml"
sleep 2.5   # cache.auth_ttl (2s): what the appliance's credentials confirmed for anonymous clients expires
run_check "credentials removed: anonymous skopeo cannot read docker.io/e2eprivate/secret:1 again" anonymous_private_denied
run_check "credentials: the seed password appears in neither the application log nor the access log" no_secret_logged
# Recorded, not asserted: the anonymous reads above were confirmed with the appliance's credentials,
# within cache.offline_auth_window; with the credentials gone and the upstreams down, are they still honoured?
stop_all_upstreams() { local pid; for pid in "$HUB_PID" "$GHCR_PID" "$NVCR_PID" "$QUAY_PID" "$AUTH_PID" "$CDN_PID"; do stop_pid "$pid"; forget_pid "$pid"; done; }
stop_all_upstreams
offline_info "after the appliance's credentials were removed, anonymous skopeo inspect of docker.io/e2eprivate/secret:1" \
    offline-private-after-credentials.log cli_skopeo inspect --no-tags --format '{{.Digest}}' docker://docker.io/e2eprivate/secret:1
start_upstreams -online2 || run_check "online: every upstream process restarted again" false

METRICS=$W/metrics-after-pulls.txt
app curl -sS --max-time 10 -o "$METRICS" "http://127.0.0.1:$ADMIN_PORT/metrics" || true
grep -E '^regcache_(cache_hits_total|cache_misses_total|http_requests_total)[ {]' "$METRICS" | sed 's/^/INFO: metrics: /' || true
promtool_metrics() {
    command -v promtool >/dev/null || { echo "promtool missing (Debian package prometheus)"; return 1; }
    [[ -s $METRICS ]] || { echo "no metrics fetched"; return 1; }
    echo "$(grep -c '^regcache_' "$METRICS") samples"
    promtool check metrics <"$METRICS"
}
run_check "metrics: /metrics after the pulls (metrics-after-pulls.txt) passes promtool check metrics" promtool_metrics
fi # want main (sections 6 to 9)
run_check_here "regcache exits 0 within 10 s of SIGTERM" stop_regcache

# ---------------------------------------------------------------------------------------------------
# trust: faults (scripts/e2e/trust.sh), each on a fresh appliance with the same CA

if want faults; then trust_faults; fi

# ---------------------------------------------------------------------------------------------------
# 10. deployment: the repo's docker-compose.yml, run by docker-compose (v1) on a dockerd inside APP
# (network_mode: host is APP's network), with the image from scripts/docker-image.sh (nothing is
# pulled; `up --no-build`), ./certs holding the CA the clients already trust, a fresh ./cache, and
# ./config/regcache.toml the e2e config. A representative set of the client checks runs against it.

if want main; then
AD=$W/app-docker     # APP's dockerd
CD=$W/compose        # the compose project folder
APP_DOCKER_PID='' COMPOSE_UP=0 CID=''
appdocker() { docker -H "unix://$AD/docker.sock" "$@"; }
compose() { (cd "$CD" && DOCKER_HOST=unix://$AD/docker.sock timeout 180 docker-compose -p rce2e "$@"); }
compose_logs() { # the container's stdout (access log) and stderr (application log) into logs/
    [[ -n $CID ]] && appdocker logs "$CID" >"$LOGS/compose-regcache.access.log" 2>"$LOGS/compose-regcache.log"
}
compose_tools() {
    local t missing=()
    for t in docker-compose setcap getcap ldd; do command -v "$t" >/dev/null || missing+=("$t"); done
    [[ ${#missing[@]} == 0 ]] || { echo "missing: ${missing[*]} (apt-get install docker-compose libcap2-bin)"; return 1; }
    docker-compose version
}
start_app_dockerd() {
    mkdir -p "$AD/data" "$AD/exec"
    echo '{"log-level": "info"}' >"$AD/daemon.json"
    bg dockerd-app "$APP_NS" sh -c ". '$W/docker/cgroups.sh' && $HERMETIC_MOUNTS && exec dockerd --data-root '$AD/data' \
        --exec-root '$AD/exec' --pidfile '$AD/docker.pid' -H 'unix://$AD/docker.sock' --config-file '$AD/daemon.json' \
        --iptables=false --ip-forward=false --bridge=none --storage-driver=vfs"
    APP_DOCKER_PID=$!
    wait_for "dockerd in APP" "$APP_DOCKER_PID" 120 0.5 appdocker info || return 1
    appdocker version --format 'dockerd {{.Server.Version}} in APP'
}
build_image() {
    DOCKER_HOST=unix://$AD/docker.sock REGCACHE_BIN=$BIN timeout 300 bash "$REPO/scripts/docker-image.sh" regcache:local
    appdocker image inspect --format '{{json .Config}}' regcache:local
    expect_eq "$(appdocker image inspect --format '{{.Config.User}}' regcache:local)" 10001:10001 "image user"
}
compose_project() {
    mkdir -p "$CD/certs" "$CD/cache" "$CD/config"
    cp "$REPO/docker-compose.yml" "$CD/docker-compose.yml"
    # the CA the direct run created and the clients trust
    cp "$RC/state/certs/ca.crt" "$RC/state/certs/ca.key" "$CD/certs/"
    chmod 600 "$CD/certs/ca.key"
    cp "$PKI/ca.crt" "$CD/config/public-ca.crt"
    render_config "$CD/config/regcache.toml" /var/lib/regcache /etc/regcache/public-ca.crt
    chown -R 10001:10001 "$CD/certs" "$CD/cache" "$CD/config"
}
compose_up() { # run with run_check_here: sets CID
    local i state
    compose up -d --no-build || return 1
    CID=$(compose ps -q regcache) || return 1
    [[ -n $CID ]] || { echo "docker-compose ps -q regcache: no container"; return 1; }
    echo "container $CID"
    for ((i = 0; i < 60; i++)); do
        compose_logs
        grep -q 'listening for https on' "$LOGS/compose-regcache.log" && break
        state=$(appdocker inspect -f '{{.State.Status}} restarts={{.RestartCount}}' "$CID")
        [[ $state == running* ]] || { echo "container $state"; break; }
        sleep 0.5
    done
    compose ps
    grep -E 'listening for|ready' "$LOGS/compose-regcache.log" | cut -c1-200 || true
    grep -qE 'listening for https on' "$LOGS/compose-regcache.log" || {
        echo "the appliance did not come up; its log:"; tail -n 20 "$LOGS/compose-regcache.log"; return 1
    }
    COMPOSE_UP=1
}
# uid 10001 binds 53/443/80 only through the file capability cap_net_bind_service=+ep on the binary
compose_user_and_caps() {
    local pid status what
    pid=$(appdocker inspect -f '{{.State.Pid}}' "$CID")
    status=$(grep -E '^(Uid|Gid|CapPrm|CapEff|CapBnd):' "/proc/$pid/status")
    echo "$status"
    expect_eq "$(appdocker inspect -f '{{.Config.User}}' "$CID")" 10001:10001 "Config.User"
    expect_eq "$(awk '$1 == "Uid:" {print $2 "/" $3}' <<<"$status")" 10001/10001 "real/effective uid of the serving process"
    expect_eq "$(awk '$1 == "CapEff:" {print $2}' <<<"$status")" 0000000000000400 "effective capabilities (CAP_NET_BIND_SERVICE only)"
    what=$(getcap "/proc/$pid/root/usr/local/bin/regcache")
    echo "getcap: $what"
    [[ $what == *cap_net_bind_service=ep* ]] || { echo "the binary in the container has no cap_net_bind_service=ep"; return 1; }
    for what in "dns on $APP_IP:53" "https on $APP_IP:443" "http on $APP_IP:80"; do
        grep -qF "listening for $what" "$LOGS/compose-regcache.log" || { echo "no 'listening for $what'"; return 1; }
    done
    appdocker exec "$CID" /usr/local/bin/regcache --version
}
compose_ca() {
    app curl -sSf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/ca.crt" | cmp - "$W/regcache-ca.crt"
    echo "admin /ca.crt is the CA in ./certs"
}
compose_healthy() {
    local i h=''
    for ((i = 0; i < 90; i++)); do
        h=$(appdocker inspect -f '{{.State.Health.Status}}' "$CID")
        [[ $h == healthy ]] && break
        sleep 1
    done
    appdocker inspect -f '{{json .State.Health}}' "$CID" | cut -c1-600
    expect_eq "$h" healthy "health status"
}
compose_cache_owned() {
    local n bad
    n=$(find "$CD/cache" -type f | wc -l)
    bad=$(find "$CD/cache" "$CD/certs" ! -uid 10001 | head -n 5)
    echo "$n files in ./cache"; (cd "$CD" && find cache -maxdepth 3 | sed -n '1,12p')
    [[ $n -gt 0 ]] || { echo "nothing was cached"; return 1; }
    [[ -z $bad ]] || { echo "not owned by uid 10001: $bad"; return 1; }
}
compose_access_logged() { # HOST...: 200 blob GETs from CLI for each host in the container's access log
    local h n
    compose_logs
    for h in "$@"; do
        n=$(grep -cE "^$CLI_IP_RE - .*\"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64} HTTP/[0-9.]+\" 200 [0-9]+ .*\"${h//./\\.}\"\$" \
            "$LOGS/compose-regcache.access.log" || true)
        echo "$h: $n blob GETs answered 200"
        [[ $n -gt 0 ]] || return 1
    done
}
compose_down() { # run with run_check_here
    local code
    compose stop || return 1
    code=$(appdocker inspect -f '{{.State.Status}} exit {{.State.ExitCode}}' "$CID")
    compose_logs
    echo "after docker-compose stop: $code"
    compose down || return 1
    COMPOSE_UP=0
    expect_eq "$(appdocker ps -aq | wc -l)" 0 "containers left after docker-compose down"
    expect_eq "$code" "exited exit 0" "container state after stop (regcache exits 0 on SIGTERM)"
}

run_check "compose: docker-compose (v1), setcap/getcap are installed" compose_tools
if command -v docker-compose >/dev/null && command -v setcap >/dev/null; then
    run_check_here "compose: a dockerd runs in the appliance namespace (logs/dockerd-app.log)" start_app_dockerd
    run_check "compose: scripts/docker-image.sh packages the binary into regcache:local (nothing pulled), user 10001:10001" build_image
    compose_project
    run_check_here "compose: docker-compose up -d --no-build starts the appliance from the repo's docker-compose.yml" compose_up
    if [[ $COMPOSE_UP == 1 ]]; then
        run_check "compose: the appliance runs as uid 10001 with CapEff = CAP_NET_BIND_SERVICE only and binds $APP_IP:53, :443 and :80" \
            compose_user_and_caps
        pid=$(appdocker inspect -f '{{.State.Pid}}' "$CID" 2>/dev/null || true)
        info "compose: serving process: $(grep -hE '^(Uid|CapEff):' "/proc/$pid/status" 2>/dev/null | tr -s '\t' ' ' | paste -sd' ');" \
            "in the image: $(getcap "/proc/$pid/root/usr/local/bin/regcache" 2>&1 | sed "s|/proc/$pid/root||")"
    else
        compose_logs || true
        say "FINDING: compose: the appliance did not come up under uid 10001: $(grep -m1 -iE 'error|denied' "$LOGS/compose-regcache.log" 2>/dev/null | cut -c1-300)"
    fi
else
    skip "compose deployment: docker-compose or setcap missing (apt-get install docker-compose libcap2-bin)"
fi
if [[ $COMPOSE_UP == 1 ]]; then
    run_check "compose: admin /ca.crt is the CA put in ./certs" compose_ca
    run_check "compose: dns: docker.io A -> $APP_IP" dns_expect docker.io A NOERROR "$APP_IP"
    run_check "compose: dns: ghcr.io A -> $APP_IP" dns_expect ghcr.io A NOERROR "$APP_IP"
    run_check "compose: dns: $OTHER_HOST forwarded -> $OTHER_IP" dns_expect "$OTHER_HOST" A NOERROR "$OTHER_IP"
    if [[ $DOCKER_OK == 1 ]]; then
        run_check "compose: dockerd pulls docker.io/library/small:1 (cold cache)" docker_pull_fresh docker.io/library/small:1 small
        run_check "compose: dockerd pulls ghcr.io/acme/tool:v1 (cold cache)" docker_pull_fresh ghcr.io/acme/tool:v1 tool
    fi
    SKOPEO_OUT=$W/skopeo-compose
    run_check "compose: skopeo copies docker.io/library/small:1" skopeo_pull docker.io/library/small:1 small
    P=$W/podman-compose
    mkdir -p "$P/root" "$P/runroot" "$P/tmp"
    run_check "compose: podman (fresh --root) pulls docker.io/library/small:1" podman_pull docker.io/library/small:1 small
    run_check "compose: the container's access log (docker logs) has 200 blob GETs for $HUB_HOST and $GHCR_HOST" \
        compose_access_logged "$HUB_HOST" "$GHCR_HOST"
    run_check "compose: ./cache holds the fills, ./cache and ./certs owned by uid 10001" compose_cache_owned
    run_check "compose: docker inspect health becomes 'healthy' (regcache healthcheck; interval 30s)" compose_healthy
    run_check_here "compose: docker-compose stop (regcache exits 0) and down (no container left)" compose_down
fi
if [[ -n $APP_DOCKER_PID ]]; then
    [[ $COMPOSE_UP == 1 ]] && { compose down >"$LOGS/compose-down.log" 2>&1 || true; }
    stop_pid "$APP_DOCKER_PID"; forget_pid "$APP_DOCKER_PID"
fi
fi # want main (section 10)
stop_dockerd


info "finished after $((SECONDS - T0)) s"
say "e2e: $PASSED passed, $FAILED failed"
if [[ $FAILED != 0 ]]; then exit 1; fi
