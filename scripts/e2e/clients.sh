# shellcheck shell=bash
# Client-side helpers the phases share (sourced by scripts/e2e.sh): dig, dockerd, skopeo and podman pulls
# checked against the pushed digests, requests for quay.io's private (Basic-auth) content, one anonymous
# request through the appliance (attack_get), and the offline evidence wrappers. Phases choose where
# clients write with SKOPEO_OUT (skopeo's oci dirs) and PODMAN_DIR (podman's root), default under $W.

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

cli_skopeo() { isolated "$CLI_NS" timeout 300 skopeo "$@"; }
skopeo_pull() { # REF KEY: inspect (which also lists the tags, offline too), then copy to an oci dir
    local got out=${SKOPEO_OUT:-$W/skopeo}
    got=$(cli_skopeo inspect --format '{{.Digest}}' "docker://$1")
    expect_eq "$got" "${DIGEST[$2]}" "skopeo inspect digest of $1"
    rm -rf "${out:?}/$2"; mkdir -p "$out"
    cli_skopeo copy "docker://$1" "oci:$out/$2:x"
}

podman_cli() {
    local p=${PODMAN_DIR:-$W/podman}
    mkdir -p "$p/root" "$p/runroot" "$p/tmp"
    isolated "$CLI_NS" timeout 300 podman --root "$p/root" --runroot "$p/runroot" --tmpdir "$p/tmp" --storage-driver vfs \
        --cgroup-manager cgroupfs --events-backend file "$@"
}
podman_pull() { # REF KEY
    podman_cli pull "$1"
    local got
    got=$(podman_cli image inspect --format '{{.Digest}}' "$1")
    # for an index podman's .Digest is the index digest too (RepoDigests has both)
    expect_eq "$got" "${DIGEST[$2]}" "podman digest of $1"
}

# ---------------------------------------------------------------------------------------------------
# private content: Docker Hub's e2eprivate/secret (token auth) and quay.io (HTTP Basic auth)

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

first_blob() { awk '$1 == "blob" {print $2; exit}' "$W/images/$1/push-plan"; } # KEY: its image's first blob
quay_blob() { first_blob quay; }
# quay_get CREDS PATH: GET through the appliance (CREDS user:password, or - for none); prints
# "HTTP-CODE X-CACHE WWW-AUTHENTICATE", body in $W/quay-body
quay_get() {
    local creds=()
    [[ $1 != - ]] && creds=(-u "$1")
    rm -f "$W/quay-body"
    cli_curl "${creds[@]}" -o "$W/quay-body" -w '%{http_code} %header{x-cache} %header{www-authenticate}' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "https://$QUAY_HOST$2"
}
sha256_of() { echo "sha256:$(sha256sum <"$1" | cut -d' ' -f1)"; } # FILE: its digest
body_is() { # DIGEST: $W/quay-body hashes to DIGEST
    [[ -f $W/quay-body && $(sha256_of "$W/quay-body") == "$1" ]]
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

# attack_get VIA METHOD HOST PATH [CURL-ARGS...]: one anonymous request from CLI through the appliance, over
# HTTPS (the name resolved by the appliance's DNS, as the clients do) or the plain-HTTP mirror (?ns=HOST).
# Sets A_CODE A_TYPE A_DCD A_XC A_SUM (the body's digest, GET only) and prints one line.
attack_get() {
    local via=$1 method=$2 host=$3 path=$4 url head=() out; shift 4
    case $via in
    https) url=https://$host$path ;;
    mirror) url="http://$APP_IP$path?ns=$host" ;;
    esac
    [[ $method == HEAD ]] && head=(-I)
    rm -f "$W/attack-body"
    out=$(cli curl -sS --max-time 30 --cacert "$W/regcache-ca.crt" "${head[@]}" "$@" -o "$W/attack-body" \
        -w '%{http_code}|%header{content-type}|%header{docker-content-digest}|%header{x-cache}|%{size_download}' "$url") \
        || out="000||||0"
    IFS='|' read -r A_CODE A_TYPE A_DCD A_XC A_SIZE <<<"$out"
    A_SUM=-
    [[ $method == GET && -f $W/attack-body ]] && A_SUM=$(sha256_of "$W/attack-body")
    echo "$via $method $url: HTTP $A_CODE type=${A_TYPE:-none} docker-content-digest=${A_DCD:-none} x-cache=${A_XC:-none} bytes=$A_SIZE"
}

# ---------------------------------------------------------------------------------------------------
# offline evidence

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
# Behaviour recorded, not asserted (INFO): cases the offline rules may not cover.
offline_info() { # WHAT LOGNAME FUNC ARGS...
    local what=$1 log=$LOGS/$2 outcome; shift 2
    outcome=$(attempt "$log" offline_evidence "$@")
    info "offline: $what: $outcome (logs/${log##*/})"
}

# warm_cache: what the offline phase pulls again, pulled once through the appliance by dockerd, skopeo
# and podman (for a run without the clients and cache phases, which pull it as their checks)
warm_cache() {
    local SKOPEO_OUT=$W/skopeo-warm PODMAN_DIR=$W/podman-warm ref
    for ref in docker.io/library/small:1:small docker.io/library/alpine-ish:latest:alpine ghcr.io/acme/tool:v1:tool \
        nvcr.io/nvidia/tiny:25.03:tiny; do
        [[ $DOCKER_OK != 1 ]] || docker_pull "${ref%:*}" "${ref##*:}"
        skopeo_pull "${ref%:*}" "${ref##*:}"
        podman_pull "${ref%:*}" "${ref##*:}"
    done
    [[ $DOCKER_OK != 1 ]] || docker_pull small:1 small
    private_read_with_credentials
    basic_pull_with_credentials
}
