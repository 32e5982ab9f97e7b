# shellcheck shell=bash
# Phase mirrors (issue 13 part 3, verified fallback sources), on a fresh appliance (its own state dir
# holding the run's CA) whose nvcr.io has `mirrors = ["https://example.org"]`: a second docker-registry
# at example.org holding copies of nvcr.io's images, and nvcr.io's upstream reached through
# scripts/e2e/throttler.py, which answers 429 to every blob GET (a spent pull quota) and forwards the
# rest. skopeo pulls nvidia/tiny through the appliance: every blob comes from the mirror, verified and
# stored. The mirror's copy of nvidia/fault's layer has one byte changed: refused, never stored,
# counted per mirror, and the pull fails.
PHASE_NEEDS=(stopped-appliance upstreams)

MIRROR_HOST=$OTHER_HOST MIRROR_IP=$OTHER_IP   # example.org: resolvable upstream, nothing else on :443
THROTTLE_PORT=8444

# mirror_world: the mirror registry with copies of tiny and fault (fault's layer corrupted), the throttler
mirror_world() {
    local m=$W/mirrors
    local hex
    pki_leaf "$PKI" "$MIRROR_HOST" "$MIRROR_HOST" || return 1
    registry_config "$ASSETS/registry-plain.yml.in" "$m/registry" "$MIRROR_IP:443" "$MIRROR_HOST" || return 1
    bg mirror-registry "$APP_NS" docker-registry serve "$m/registry/config.yml"
    MIRROR_PIDS=("$!")
    wait_for "mirror registry" "$!" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$MIRROR_HOST/v2/" || return 1
    push_layout "$MIRROR_HOST" nvidia/tiny "$W/images/tiny" || return 1
    push_layout "$MIRROR_HOST" nvidia/fault "$W/images/fault" || return 1
    hex=$(layer_hex fault)
    corrupt "$m/registry/storage/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data" || return 1
    bg throttler "$APP_NS" "$PY" "$ASSETS/throttler.py" --listen "$NVCR_IP:$THROTTLE_PORT" \
        --tls-cert "$PKI/$NVCR_HOST.crt" --tls-key "$PKI/$NVCR_HOST.key" --backend "$NVCR_IP:443" --ca "$PKI/ca.crt"
    MIRROR_PIDS+=("$!")
    wait_for throttler "$!" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$NVCR_HOST:$THROTTLE_PORT/v2/"
}
layer_hex() { # KEY: the hex of the image's largest blob (its layer)
    local d
    for d in $(awk '$1 == "blob" {print $2}' "$W/images/$1/push-plan"); do
        echo "$(stat -c %s "$W/images/$1/blobs/sha256/${d#sha256:}") ${d#sha256:}"
    done | sort -n | awk 'END {print $2}'
}
corrupt() { # FILE: one byte changed in place (same size)
    "$PY" - "$1" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(1000)
    b = f.read(1)
    f.seek(1000)
    f.write(bytes([b[0] ^ 0xFF]))
EOF
}
# mirror_appliance: the fresh appliance (regcache-mirrors.log) with nvcr.io behind the throttler and mirrored
mirror_appliance() {
    local st=$W/mirrors/appliance
    mkdir -p "$st/state/certs"
    cp "$RC/state/certs/ca.crt" "$RC/state/certs/ca.key" "$st/state/certs/"
    render_config "$st/config.toml" "$st/state" "$PKI/ca.crt"
    sed -i "s|^host = \"$NVCR_HOST\"\$|&\\nupstream = \"https://$NVCR_HOST:$THROTTLE_PORT\"\\nmirrors = [\"https://$MIRROR_HOST\"]|" \
        "$st/config.toml"
    grep -A2 "^host = \"$NVCR_HOST\"" "$st/config.toml"
    start_regcache "$st/config.toml" regcache-mirrors
}

metric() { # SAMPLE-PREFIX: its value on the running appliance's /metrics (0 when absent)
    app curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v p="$1" 'index($0, p) == 1 {v = $NF} END {print v + 0}'
}
stored() { # HEX: the object is in the mirror appliance's cache
    [[ -n $(find "$W/mirrors/appliance/state" -path '*/objects/sha256/*' -name "$1" -type f) ]]
}
blob_hexes() { awk '$1 == "blob" {sub(/^sha256:/, "", $2); print $2}' "$W/images/$1/push-plan"; }

primary_throttles() {
    local hex path
    hex=$(layer_hex tiny) path=/v2/nvidia/tiny/blobs/sha256:$hex
    http_code_in 429 app_curl --max-time 10 "https://$NVCR_HOST:$THROTTLE_PORT$path"
    http_code_in 200 app_curl --max-time 10 -I "https://$NVCR_HOST:$THROTTLE_PORT$path"
    http_code_in 200 app_curl --max-time 10 "https://$MIRROR_HOST$path"
    echo "blob GET 429, HEAD 200 at the primary; GET 200 at the mirror"
}
pull_from_mirror() {
    local hex n=0 want verified
    cli_skopeo copy "docker://$NVCR_HOST/nvidia/tiny:25.03" "oci:$W/mirrors/tiny:x"
    for hex in $(blob_hexes tiny); do
        stored "$hex" || { echo "blob $hex not stored"; return 1; }
        grep -q "GET /v2/nvidia/tiny/blobs/sha256:$hex .* 429" "$LOGS/throttler.log" ||
            { echo "the primary was not asked for $hex first"; return 1; }
        n=$((n + 1))
    done
    want=$n verified=$(metric "regcache_mirror_fetches_total{mirror=\"$MIRROR_HOST\",result=\"verified\"}")
    echo "$n blobs stored; mirror fetches verified: $verified"
    expect_eq "$verified" "$want" "verified fetches from $MIRROR_HOST"
    grep -q "cached from a mirror, verified" "$LOGS/regcache-mirrors.log"
}
wrong_bytes_refused() {
    local rc=0 hex mismatch
    hex=$(layer_hex fault)
    cli_skopeo copy "docker://$NVCR_HOST/nvidia/fault:1" "oci:$W/mirrors/fault:x" || rc=$?
    echo "skopeo exit $rc"
    [[ $rc != 0 ]] || { echo "the pull succeeded with the mirror's wrong bytes"; return 1; }
    if stored "$hex"; then echo "the corrupt layer $hex was stored"; return 1; fi
    mismatch=$(metric "regcache_mirror_fetches_total{mirror=\"$MIRROR_HOST\",result=\"mismatch\"}")
    echo "mirror fetches refused for a mismatch: $mismatch"
    [[ $mismatch -ge 1 ]]
    grep -q "mirror's object refused" "$LOGS/regcache-mirrors.log"
}

phase_run() {
    local t=$SECONDS pid
    RESOLVE+=(--resolve "$MIRROR_HOST:443:$MIRROR_IP" --resolve "$NVCR_HOST:$THROTTLE_PORT:$NVCR_IP")
    MIRROR_PIDS=()
    if ! mirror_world >"$LOGS/mirror-world.log" 2>&1; then
        run_check "mirrors: the mirror registry and the throttler start" false
    else
        run_check "mirrors: the primary answers 429 to blob GETs (HEAD 200); the mirror holds a copy" primary_throttles
        if mirror_appliance >"$LOGS/mirror-appliance.log" 2>&1; then
            run_check "mirrors: skopeo pulls nvcr.io/nvidia/tiny:25.03 while the primary throttles: every blob from the mirror, verified, stored" \
                pull_from_mirror
            run_check "mirrors: the mirror's wrong bytes for nvidia/fault's layer: refused, not stored, counted; the pull fails" \
                wrong_bytes_refused
            stop_forget "$REGCACHE_PID"
        else
            run_check "mirrors: the appliance with mirrors starts (logs/regcache-mirrors.log)" false
        fi
    fi
    for pid in "${MIRROR_PIDS[@]}"; do stop_forget "$pid"; done
    info "mirrors phase took $((SECONDS - t)) s"
}
