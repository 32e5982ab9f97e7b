# shellcheck shell=bash
# The e2e test world (sourced by scripts/e2e.sh): its names and addresses, the public PKI, the two
# namespaces, the upstream resolver, the upstream registries, token service and CDN, and the seeded test
# images. Uses scripts/lib. What later phases read of it: the files under $W (pki/, upstream/,
# images/, state/digests) and DIGEST/PLAT_DIGEST/BIG_DIGEST, loaded from state/digests.
#
#   namespace APP  10.77.0.1/24  regcache, and the "internet" as /32s on its loopback: dnsmasq
#                  127.0.0.1:5353, CNCF distribution for registry-1.docker.io (token auth + 307 to the
#                  CDN), ghcr.io, nvcr.io and quay.io (HTTP Basic auth), a token service for
#                  auth.docker.io, a static CDN server; the attack phase's odd registries
#   namespace CLI  10.77.0.2/24  dockerd, skopeo, podman, dig; resolver 10.77.0.1; no route upstream

# Fixed names so a crashed run's leftovers are found and removed by the next run.
APP_NS=rce2e-app
CLI_NS=rce2e-cli
APP_IP=10.77.0.1
CLI_IP=10.77.0.2
CLI_IP_RE=${CLI_IP//./\\.}
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
# the attack phase's registries that redirect without checking
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
QUAY_REF=$QUAY_HOST/corp/app:1
BIG_MIB=96              # the blob of the coalescing check

app() { ip netns exec "$APP_NS" "$@"; }
cli() { ip netns exec "$CLI_NS" "$@"; }
RESOLVE=()
for hp in "${UPSTREAMS[@]}"; do RESOLVE+=(--resolve "${hp%%:*}:443:${hp#*:}"); done
# curl inside APP straight to the upstreams, trusting the public CA.
app_curl() { app curl -sS --max-time 60 --cacert "$PKI/ca.crt" "${RESOLVE[@]}" "$@"; }
# curl inside CLI, resolving through the appliance and trusting only its CA.
cli_curl() { cli curl -sS --max-time 60 --cacert "$W/regcache-ca.crt" "$@"; }

# ---------------------------------------------------------------------------------------------------
# setup, in order (world_up)

mint_pki() { # the "internet" CA, a leaf per upstream name, the token signing certificate
    local name
    pki_ca "$PKI" "regcache e2e public root $$"
    for name in "$HUB_HOST" "$AUTH_HOST" "$CDN_HOST" "$GHCR_HOST" "$NVCR_HOST" "$QUAY_HOST" \
        "$K8S_HOST" "$K8S_STORE" "$SSO_HOST" "$LOGIN_HOST" "$LIAR_HOST"; do
        pki_leaf "$PKI" "$name" "$name"
    done
    pki_signer "$PKI" token-signing "$TOKEN_ISSUER"
    mkdir -p "$PKI/certdir" && cp "$PKI/ca.crt" "$PKI/certdir/ca.crt"   # for skopeo --cert-dir to the upstreams
}

world_namespaces() {
    [[ -d /etc/ssl ]] || die "/etc/ssl missing"
    netns_pair "$APP_NS" "$APP_IP" "$CLI_NS" "$CLI_IP"
    local hp
    for hp in "${UPSTREAMS[@]}" "$OTHER_HOST:$OTHER_IP"; do ip -n "$APP_NS" addr add "${hp#*:}/32" dev lo; done
    # APP has no system resolver (anything that bypasses the configured dns.upstream fails fast); the
    # upstream names are in a hosts file only while the world phase checks them directly (app_hosts).
    echo "nameserver 127.0.0.9" >"/etc/netns/$APP_NS/resolv.conf"
    echo "nameserver $APP_IP" >"/etc/netns/$CLI_NS/resolv.conf"
}
app_hosts() { # on|off: the upstream names in APP's hosts file
    local hp
    if [[ $1 == on ]]; then
        { echo "127.0.0.1 localhost"; for hp in "${UPSTREAMS[@]}"; do echo "${hp#*:} ${hp%%:*}"; done; } >"/etc/netns/$APP_NS/hosts"
    else
        rm -f "/etc/netns/$APP_NS/hosts"
    fi
}

world_resolver() {
    start_dnsmasq "$APP_NS" "$DNSMASQ_PORT" --log-queries --local-ttl=300 \
        --host-record="$HUB_HOST,$HUB_IP" --host-record="$AUTH_HOST,$AUTH_IP" --host-record="$CDN_HOST,$CDN_IP" \
        --host-record="$GHCR_HOST,$GHCR_IP" --host-record="$NVCR_EDGE,$NVCR_IP" --cname="$NVCR_HOST,$NVCR_EDGE" \
        --host-record="$QUAY_HOST,$QUAY_IP" \
        --host-record="$K8S_HOST,$K8S_IP" --host-record="$K8S_STORE,$K8S_STORE_IP" \
        --host-record="$SSO_HOST,$SSO_IP" --host-record="$LOGIN_HOST,$LOGIN_IP" --host-record="$LIAR_HOST,$LIAR_IP" \
        --host-record="$OTHER_HOST,$OTHER_IP" --cname="www.$OTHER_HOST,$OTHER_HOST" \
        || die "dnsmasq did not start (logs/dnsmasq.log)"
}

# quay.io: htpasswd with one bcrypt entry (cost 4: distribution checks it on every request). htpasswd
# (apache2-utils) when installed, else Python's crypt module (libxcrypt does bcrypt).
bcrypt_hash() { # PASSWORD
    if command -v htpasswd >/dev/null; then
        htpasswd -nbB -C 4 x "$1" | sed -n 's/^x://p'
    else
        "$PY" -W ignore -c 'import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))' "$1"
    fi
}
upstream_configs() {
    UP=$W/upstream
    registry_config "$ASSETS/registry-hub.yml.in" "$UP/hub" "$HUB_IP:443" "$HUB_HOST" \
        CDN_HOST="$CDN_HOST" AUTH_HOST="$AUTH_HOST" ISSUER="$TOKEN_ISSUER" TOKEN_ROOTS="$PKI/ca.crt"
    registry_config "$ASSETS/registry-plain.yml.in" "$UP/ghcr" "$GHCR_IP:443" "$GHCR_HOST"
    registry_config "$ASSETS/registry-plain.yml.in" "$UP/nvcr" "$NVCR_IP:443" "$NVCR_HOST"
    mkdir -p "$UP/quay"
    printf '%s:%s\n' "$QUAY_USER" "$(bcrypt_hash "$QUAY_PASS")" >"$UP/quay/htpasswd"
    grep -qE '^[a-z]+:\$2[aby]\$04\$.{53}$' "$UP/quay/htpasswd" || die "no bcrypt hash for quay.io's htpasswd"
    registry_config "$ASSETS/registry-basic.yml.in" "$UP/quay" "$QUAY_IP:443" "$QUAY_HOST" \
        REALM="e2e-quay" HTPASSWD="$UP/quay/htpasswd"
}

# start_upstreams [LOG-SUFFIX]: every upstream process (again after the offline checks, on the same storage)
UPSTREAMS_UP=0 UPSTREAM_PIDS=()
start_upstreams() {
    local sfx=${1:-} hub ghcr nvcr quay auth cdn
    bg "upstream-hub$sfx" "$APP_NS" docker-registry serve "$UP/hub/config.yml"; hub=$!
    bg "upstream-ghcr$sfx" "$APP_NS" docker-registry serve "$UP/ghcr/config.yml"; ghcr=$!
    bg "upstream-nvcr$sfx" "$APP_NS" docker-registry serve "$UP/nvcr/config.yml"; nvcr=$!
    bg "upstream-quay$sfx" "$APP_NS" docker-registry serve "$UP/quay/config.yml"; quay=$!
    bg "upstream-auth$sfx" "$APP_NS" "$PY" "$ASSETS/token_server.py" --listen "$AUTH_IP:443" \
        --tls-cert "$PKI/$AUTH_HOST.crt" --tls-key "$PKI/$AUTH_HOST.key" \
        --sign-cert "$PKI/token-signing.crt" --sign-key "$PKI/token-signing.key" \
        --issuer "$TOKEN_ISSUER" --user "$SEED_USER:$SEED_PASS" --private-prefix e2eprivate/
    auth=$!
    bg "upstream-cdn$sfx" "$APP_NS" "$PY" "$ASSETS/static_server.py" --listen "$CDN_IP:443" --root "$UP/hub/storage" \
        --tls-cert "$PKI/$CDN_HOST.crt" --tls-key "$PKI/$CDN_HOST.key"
    cdn=$!
    UPSTREAM_PIDS=("$hub" "$ghcr" "$nvcr" "$quay" "$auth" "$cdn") UPSTREAMS_UP=1
    wait_for "$HUB_HOST" "$hub" 100 0.1 http_code_in 401 app_curl --max-time 2 "https://$HUB_HOST/v2/" &&
        wait_for "$GHCR_HOST" "$ghcr" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$GHCR_HOST/v2/" &&
        wait_for "$NVCR_HOST" "$nvcr" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$NVCR_HOST/v2/" &&
        wait_for "$QUAY_HOST" "$quay" 100 0.1 http_code_in 401 app_curl --max-time 2 "https://$QUAY_HOST/v2/" &&
        wait_for "$AUTH_HOST" "$auth" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$AUTH_HOST/token?service=x" &&
        wait_for "$CDN_HOST" "$cdn" 100 0.1 http_code_in 404 app_curl --max-time 2 "https://$CDN_HOST/nothing"
}
stop_upstreams() { # [verbose]: stops (and reaps) every upstream process
    local pid
    for pid in "${UPSTREAM_PIDS[@]}"; do
        [[ -z ${1:-} ]] || echo "stopping ${PIDNAME[$pid]} (pid $pid)"
        stop_forget "$pid"
    done
    UPSTREAM_PIDS=() UPSTREAMS_UP=0
}

# ---------------------------------------------------------------------------------------------------
# test images: generated locally, pushed through the registry HTTP API; their digests in state/digests

hub_token() { # REPO ACTIONS [anonymous]
    local creds=(-u "$SEED_USER:$SEED_PASS")
    [[ ${3:-} == anonymous ]] && creds=()
    app_curl -f "${creds[@]}" "https://$AUTH_HOST/token?service=registry.docker.io&scope=repository:$1:$2" | jq -er .token
}

# seed KEY HOST REPO TAG GEN-ARGS...: appends "KEY DIGEST PLATFORM-DIGEST" to state/digests
seed() {
    local key=$1 host=$2 repo=$3 tag=$4 dir=$W/images/$1 auth='' digest plat; shift 4
    digest=$("$PY" "$ASSETS/gen_image.py" "$dir" --name "$host/$repo" --tag "$tag" "$@")
    plat=$(awk '$1 == "manifest" {print $2; exit} $1 == "tag" {print $3}' "$dir/push-plan")
    case $host in
    "$HUB_HOST") auth="Bearer $(hub_token "$repo" pull,push)" ;;
    "$QUAY_HOST") auth="Basic $(printf '%s:%s' "$QUAY_USER" "$QUAY_PASS" | base64 -w0)" ;;
    esac
    push_layout "$host" "$repo" "$dir" "$auth"
    echo "$key $digest $plat" >>"$W/state/digests"
    say "seeded $host/$repo:$tag $digest (linux/amd64 $plat)"
}
seed_all() {
    local big
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
    # regcache warm's own image (the warm phase): nothing else pulls it
    seed warmup "$HUB_HOST" library/warmup 1 --format docker --layer-mib 1 --layer-mib 2
    # the e2e config's [[warm]] job keeps this one warm
    seed kept "$HUB_HOST" library/kept 1 --format docker --layer-mib 1
    # one large random blob, no manifest: the coalescing check GETs it by digest
    head -c "$((BIG_MIB << 20))" /dev/urandom >"$W/images/big.bin"
    big=sha256:$(sha256sum "$W/images/big.bin" | cut -d' ' -f1)
    push_blob "$NVCR_HOST" nvidia/big "$W/images/big.bin" "$big"
    rm -f "$W/images/big.bin"
    echo "big $big -" >>"$W/state/digests"
    say "seeded $NVCR_HOST/nvidia/big blob $big ($BIG_MIB MiB)"
    # not pushed: the client pushes it through the appliance (phase clients)
    echo "pushed $("$PY" "$ASSETS/gen_image.py" "$W/images/pushed" --name pushed --tag 1 --format oci --layer-mib 1) -" \
        >>"$W/state/digests"
}
declare -A DIGEST=() PLAT_DIGEST=()   # image key -> top-level digest as pushed; -> its linux/amd64 manifest
load_digests() {
    local key d p
    while read -r key d p; do DIGEST[$key]=$d PLAT_DIGEST[$key]=$p; done <"$W/state/digests"
    BIG_DIGEST=${DIGEST[big]}
}

# world_up: PKI, namespaces, resolver, upstreams, seeded images (setup failures end the run)
world_up() {
    info "minting the public PKI (logs/pki.log)"
    mint_pki >"$LOGS/pki.log" 2>&1
    SEED_PASS=$(openssl rand -hex 12)
    QUAY_PASS=$(openssl rand -hex 12)
    QUAY_WRONG=$QUAY_USER:wrong-$QUAY_PASS
    world_namespaces
    world_resolver
    upstream_configs
    start_upstreams || die "an upstream did not start (logs/upstream-*.log)"
    info "upstreams up after $((SECONDS - T0)) s"
    info "generating and pushing test images (logs/seed.log)"
    seed_all >"$LOGS/seed.log" 2>&1
    sed 's/^/INFO: /' "$LOGS/seed.log"
    load_digests
    info "images seeded after $((SECONDS - T0)) s"
}
