#!/usr/bin/env bash
# End-to-end test of regcache with real clients (dig, dockerd, skopeo, podman) in network namespaces.
#
#   sudo bash scripts/e2e.sh                        # every phase; builds target/debug/regcache
#   sudo E2E_ONLY=dns,clients bash scripts/e2e.sh   # chosen phases, with the setup they need
#   REGCACHE_BIN=path E2E_KEEP=1 bash scripts/e2e.sh
#
# This file is the driver. The world (namespaces APP and CLI, the upstream registries, token service, CDN
# and resolver, the seeded images; everything minted and generated at run time, no internet) is set up by
# scripts/e2e/world.sh, the appliance and the client dockerd by scripts/e2e/appliance.sh, with the shared
# scripts/lib/ (processes, namespaces, PKI, upstreams, checks, a Garage cluster and a fleet's LAN,
# stats.py; bench/run.sh uses it too).
# Then the phases run in order, each a file scripts/e2e/phases/NN-NAME.sh that says what it checks:
#
#   world        the upstreams on their own, before the appliance starts
#   dns          intercepted names, forwarding, no AAAA leak        tls  certificates, isolation
#   clients      dockerd, skopeo, podman pulls; push; private repo  cache  coalescing; Basic auth
#   rules        [[cache.rule]]: a "0s" tag revalidated at every read, a "forever" one never (skopeo, dockerd)
#   attacks      odd registries try cached private content (issue 9)
#   docker-trust dockerd's trust for Docker Hub names (FINDING lines, asserted)
#   mirror       the plain-HTTP mirror (dockerd registry-mirrors, ctr hosts.toml)
#   onboarding   scripts/client-setup.sh                             offline  every upstream stopped; access log
#   credentials  the appliance's own credentials with SIGHUP; /metrics with promtool
#   warm         regcache warm --via the appliance; the config's [[warm]] job (issue 13)
#   faults       reset, kill -9, full disk, idle connections, SIGTERM (issue 9)
#   compose      docker-compose.yml with the image of scripts/docker-image.sh
#   corporate-proxy  a second appliance whose only way out is tinyproxy (upstream.proxy; skopeo, dockerd)
#   mirrors      blobs by digest from verified mirrors while the upstream answers 429; bad copies remembered
#   fleet        three appliances sharing one CA, a Garage S3 bucket and a [fleet] peer list (issue 11)
#
# A phase declares what it needs in PHASE_NEEDS and the driver provides it (need): appliance (the first
# appliance running; its start makes the setup checks: config rejected, ca cert, listening lines, admin),
# stopped-appliance (it ran and was stopped, with the check "regcache exits 0 within 10 s of SIGTERM";
# faults and compose need its ports), upstreams (running), client-dockerd (one running in CLI),
# warm-cache (what offline pulls again was pulled once), no-appliance-yet (world). So any phase runs alone.
# State between phases: the files under the work dir $W (pki/, upstream/, images/, state/digests,
# regcache/ with config.toml and state/, regcache-ca.crt, logs/), read through DIGEST/PLAT_DIGEST/
# BIG_DIGEST (world.sh), RC, REGCACHE_PID and ACCESS_LOG (the appliance), DOCKER_HOST/DOCKER_OK (the
# client dockerd), UPSTREAMS_UP; a phase keeps its own variables local to its phase_run.
#
# Prints PASS/FAIL/SKIP/INFO/FINDING lines and ends with "e2e: N passed, M failed"; exit 1 on any FAIL.
# FINDING lines state observed client behaviour; each is also a PASS/FAIL check that asserts it.
# Logs of every service and check go to the work dir, kept (and printed) on failure or with E2E_KEEP=1.
#
# Environment: REGCACHE_BIN (skip cargo build), E2E_ONLY (default: every phase; a comma list of phase
# names, or main = every phase but attacks and faults, trust = attacks,faults), E2E_KEEP=1, E2E_WORKDIR
# (parent of the work dir, default /tmp), PYTHON (default /usr/bin/python3), RUST_LOG (passed to regcache
# when set). Tools besides those checked at start (a missing one fails or skips its checks):
# docker-compose (v1), setcap/getcap (libcap2-bin), promtool (prometheus), ctr (containerd), garage (Garage
# 2.5 at /opt/garage/bin/garage or GARAGE_BIN; scripts/test.sh builds it), tc (iproute2).
set -Eeuo pipefail
shopt -u patsub_replacement 2>/dev/null || true

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LIB=$HERE/lib
ASSETS=$HERE/e2e
PY=${PYTHON:-/usr/bin/python3}
LIB_TAG=e2e
W='' LOGS=''
# shellcheck source=lib/proc.sh
. "$LIB/proc.sh"
# shellcheck source=lib/netns.sh
. "$LIB/netns.sh"
# shellcheck source=lib/pki.sh
. "$LIB/pki.sh"
# shellcheck source=lib/upstream.sh
. "$LIB/upstream.sh"
# shellcheck source=lib/check.sh
. "$LIB/check.sh"
# shellcheck source=lib/garage.sh
. "$LIB/garage.sh"
# shellcheck source=lib/fleet.sh
. "$LIB/fleet.sh"
# shellcheck source=e2e/world.sh
. "$ASSETS/world.sh"
# shellcheck source=e2e/appliance.sh
. "$ASSETS/appliance.sh"
# shellcheck source=e2e/clients.sh
. "$ASSETS/clients.sh"
hermetic_mounts rce2e

die() { say "e2e: setup failed: $*" >&2; exit 1; }

# Proxy and trust settings of the caller must not leak into the clients.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY \
    SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE REGISTRY_AUTH_FILE DOCKER_HOST || true

# ---------------------------------------------------------------------------------------------------
# phases chosen

PHASE_FILES=("$ASSETS"/phases/[0-9][0-9]-*.sh)
phase_name() { local n=${1##*/}; n=${n#[0-9][0-9]-}; echo "${n%.sh}"; }
choose_phases() { # prints ",NAME,...," for E2E_ONLY
    local all=() f p out=, want
    for f in "${PHASE_FILES[@]}"; do all+=("$(phase_name "$f")"); done
    IFS=, read -ra want <<<"${E2E_ONLY:-all}"
    for p in "${want[@]}"; do
        case $p in
        all) out+=$(printf '%s,' "${all[@]}") ;;
        main) for f in "${all[@]}"; do [[ $f == attacks || $f == faults ]] || out+=$f,; done ;;
        trust) out+=attacks,faults, ;;
        *) [[ " ${all[*]} " == *" $p "* ]] || die "E2E_ONLY: unknown phase '$p' (phases: ${all[*]}; or main, trust)"
            out+=$p, ;;
        esac
    done
    echo "$out"
}
CHOSEN=$(choose_phases) RAN=,

# need WHAT...: what a phase declared in PHASE_NEEDS (see the header)
need() {
    local what
    for what in "$@"; do
        case $what in
        no-appliance-yet) [[ $APPLIANCE == none ]] || die "phase needs to run before the appliance starts" ;;
        appliance) [[ $APPLIANCE != none ]] || appliance_up
            [[ $APPLIANCE == running ]] || die "the appliance was already stopped" ;;
        stopped-appliance) [[ $APPLIANCE != none ]] || appliance_up
            [[ $APPLIANCE != running ]] || appliance_down ;;
        upstreams) [[ $UPSTREAMS_UP == 1 ]] || start_upstreams -again || die "an upstream did not start again" ;;
        client-dockerd) need_client_dockerd ;;
        warm-cache)
            if [[ $RAN != *,clients,* || $RAN != *,cache,* ]]; then
                need_client_dockerd
                info "pulling what the offline phase pulls again (logs/warm-cache.log)"
                attempt "$LOGS/warm-cache.log" warm_cache >/dev/null
            fi ;;
        *) die "unknown need '$what'" ;;
        esac
    done
}

# ---------------------------------------------------------------------------------------------------
# preflight, work dir, binary

keep_workdir() { [[ ${E2E_KEEP:-0} == 1 || $FAILED != 0 || $1 != 0 ]]; } # RC: for on_exit

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, dockerd)"
for tool in ip dig curl openssl jq skopeo podman dockerd docker docker-registry dnsmasq flock timeout "$PY"; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
single_run "${BASH_SOURCE[0]}"
EXTRA_NS=()   # namespaces a phase adds (removed at the end even when the phase did not finish)
trap 'on_exit keep_workdir "$CLI_NS" "$APP_NS" "${EXTRA_NS[@]}"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# report setup errors of the main shell (checks run in subshells and report for themselves)
trap '[[ $- == *e* && $BASHPID == "$$" ]] && say "e2e: error at line $LINENO: $BASH_COMMAND" >&2' ERR

remove_stale_ns "$APP_NS" "$CLI_NS"
W=$(mktemp -d "${E2E_WORKDIR:-/tmp}/rce2e.XXXXXX")
chmod 755 "$W"
LOGS=$W/logs PKI=$W/pki
mkdir -p "$LOGS" "$PKI" "$W/checks" "$W/state" "$W/home/.docker" "$W/xdg-run" "$W/images"
echo '{}' >"$W/home/.docker/config.json"    # podman insists on it once DOCKER_CONFIG is set
info "work dir $W"
T0=$SECONDS
[[ -z ${E2E_ONLY:-} ]] || info "E2E_ONLY=$E2E_ONLY: phases $(tr ',' ' ' <<<"$CHOSEN")"

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
# the world, then the phases

world_up
for f in "${PHASE_FILES[@]}"; do
    name=$(phase_name "$f")
    [[ $CHOSEN == *,$name,* ]] || continue
    unset -f phase_run
    PHASE_NEEDS=()
    # shellcheck source=/dev/null
    . "$f"
    need "${PHASE_NEEDS[@]}"
    phase_run
    RAN+=$name,
done
[[ $APPLIANCE != running ]] || appliance_down
stop_dockerd

info "finished after $((SECONDS - T0)) s"
say "e2e: $PASSED passed, $FAILED failed"
if [[ $FAILED != 0 ]]; then exit 1; fi
