# shellcheck shell=bash
# Phase mirrors (issue 13 part 3, verified fallback sources), on a fresh appliance (its own state dir
# holding the run's CA) whose nvcr.io has `mirrors = ["https://example.org", "https://example.org:8445"]`:
# two more docker-registry instances at example.org holding copies of nvcr.io's images, and nvcr.io's
# upstream reached through scripts/e2e/throttler.py, which answers 429 to every blob GET (a spent pull
# quota) and forwards the rest. dockerd, then skopeo, pull nvidia/tiny through the appliance: every
# blob comes from the first mirror, verified and stored, once. The first mirror's copy of nvidia/fault's
# layer has one byte changed; while the second's has too, both are refused, never stored, counted per
# mirror, and the pull fails. The second's mended, a pull still fails without either mirror being
# asked for the layer again (each mismatch is remembered for 30 minutes; the skips are counted); after
# a reload (SIGHUP forgets them), one pull gets the layer from the second within the same requests
# (the first's mismatch counted again), verified and stored.
PHASE_NEEDS=(stopped-appliance upstreams client-dockerd)

MIRROR_HOST=$OTHER_HOST MIRROR_IP=$OTHER_IP   # example.org: resolvable upstream, nothing else on :443
THROTTLE_PORT=8444
SECOND_PORT=8445 SECOND_MIRROR=$OTHER_HOST:8445

# mirror_registry NAME ADDR AUTHORITY: a docker-registry for the mirror AUTHORITY, in $W/mirrors/NAME
mirror_registry() {
    registry_config "$ASSETS/registry-plain.yml.in" "$W/mirrors/$1" "$2" "$MIRROR_HOST" || return 1
    bg "$1" "$APP_NS" docker-registry serve "$W/mirrors/$1/config.yml"
    MIRROR_PIDS+=("$!")
    wait_for "$1" "$!" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$3/v2/"
}
fault_layer() { # NAME: the file of fault's layer in the mirror registry NAME's storage
    local hex
    hex=$(layer_hex fault)
    echo "$W/mirrors/$1/storage/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
}
# mirror_world: the mirror registries with copies of tiny and fault (fault's layer corrupted in both),
# the throttler
mirror_world() {
    pki_leaf "$PKI" "$MIRROR_HOST" "$MIRROR_HOST" || return 1
    mirror_registry mirror-registry "$MIRROR_IP:443" "$MIRROR_HOST" || return 1
    mirror_registry second-mirror "$MIRROR_IP:$SECOND_PORT" "$SECOND_MIRROR" || return 1
    push_layout "$MIRROR_HOST" nvidia/tiny "$W/images/tiny" || return 1
    push_layout "$MIRROR_HOST" nvidia/fault "$W/images/fault" || return 1
    push_layout "$SECOND_MIRROR" nvidia/fault "$W/images/fault" || return 1
    corrupt "$(fault_layer mirror-registry)" || return 1
    corrupt "$(fault_layer second-mirror)" || return 1
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
corrupt() { # FILE: one byte changed in place (same size); twice mends it
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
    sed -i "s|^host = \"$NVCR_HOST\"\$|&\\nupstream = \"https://$NVCR_HOST:$THROTTLE_PORT\"\\nmirrors = [\"https://$MIRROR_HOST\", \"https://$SECOND_MIRROR\"]|" \
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
mirror_metric() { metric "regcache_mirror_fetches_total{mirror=\"$1\",result=\"$2\"}"; } # MIRROR RESULT
# tiny_from_first_mirror: every blob of tiny stored, asked of the primary first (429), fetched from
# the first mirror once (its verified fetches equal the blobs)
tiny_from_first_mirror() {
    local hex n=0 verified
    for hex in $(blob_hexes tiny); do
        stored "$hex" || { echo "blob $hex not stored"; return 1; }
        grep -q "GET /v2/nvidia/tiny/blobs/sha256:$hex .* 429" "$LOGS/throttler.log" ||
            { echo "the primary was not asked for $hex first"; return 1; }
        n=$((n + 1))
    done
    verified=$(mirror_metric "$MIRROR_HOST" verified)
    echo "$n blobs stored; mirror fetches verified: $verified"
    expect_eq "$verified" "$n" "verified fetches from $MIRROR_HOST"
    grep -q "cached from a mirror, verified" "$LOGS/regcache-mirrors.log"
}
dockerd_from_mirror() {
    docker_pull_fresh "$NVCR_HOST/nvidia/tiny:25.03" tiny && tiny_from_first_mirror
}
skopeo_from_mirror() {
    cli_skopeo copy "docker://$NVCR_HOST/nvidia/tiny:25.03" "oci:$W/mirrors/tiny:x" && tiny_from_first_mirror
}
primary_gets() { # KEY: the primary's 429s to GETs of KEY's layer so far (one per client request)
    grep -c "GET /v2/nvidia/$1/blobs/sha256:$(layer_hex "$1") .* 429" "$LOGS/throttler.log" || true
}
wrong_bytes_refused() {
    local rc=0 hex first second
    hex=$(layer_hex fault)
    cli_skopeo copy "docker://$NVCR_HOST/nvidia/fault:1" "oci:$W/mirrors/fault:x" || rc=$?
    echo "skopeo exit $rc"
    [[ $rc != 0 ]] || { echo "the pull succeeded with the mirrors' wrong bytes"; return 1; }
    if stored "$hex"; then echo "the corrupt layer $hex was stored"; return 1; fi
    first=$(mirror_metric "$MIRROR_HOST" mismatch) second=$(mirror_metric "$SECOND_MIRROR" mismatch)
    echo "mirror fetches refused for a mismatch: $MIRROR_HOST $first, $SECOND_MIRROR $second"
    [[ $first -ge 1 && $second -ge 1 ]]
    grep -q "mirror's object refused" "$LOGS/regcache-mirrors.log"
}
# mirror_gets NAME: the mirror registry NAME's GETs of fault's layer so far (its own request log)
mirror_gets() {
    grep -cE "msg=\"response completed[^\"]*\" .*http\.request\.method=GET .*http\.request\.uri=\"?/v2/nvidia/fault/blobs/sha256:$(layer_hex fault)" \
        "$LOGS/$1.log" || true
}
skip_metric() { metric "regcache_mirror_skips_total{mirror=\"$1\",reason=\"$2\"}"; } # MIRROR REASON
mismatches_remembered() {
    local rc=0 first second
    corrupt "$(fault_layer second-mirror)" # mended
    first=$(mirror_gets mirror-registry) second=$(mirror_gets second-mirror)
    echo "GETs of the layer so far: $MIRROR_HOST $first, $SECOND_MIRROR $second"
    cli_skopeo copy "docker://$NVCR_HOST/nvidia/fault:1" "oci:$W/mirrors/fault:x" || rc=$?
    echo "skopeo exit $rc"
    [[ $rc != 0 ]] || { echo "a remembered mismatch was asked again"; return 1; }
    expect_eq "$(mirror_gets mirror-registry) $(mirror_gets second-mirror)" "$first $second" \
        "GETs of the layer at $MIRROR_HOST and $SECOND_MIRROR (none new)"
    echo "skips for a mismatch: $MIRROR_HOST $(skip_metric "$MIRROR_HOST" mismatch), $SECOND_MIRROR $(skip_metric "$SECOND_MIRROR" mismatch)"
    [[ $(skip_metric "$MIRROR_HOST" mismatch) -ge 1 && $(skip_metric "$SECOND_MIRROR" mismatch) -ge 1 ]]
}
reload_mirrors_appliance() { # SIGHUP; waits for "configuration reloaded"
    local log=$LOGS/regcache-mirrors.log before i
    before=$(wc -l <"$log")
    kill -HUP "$REGCACHE_PID"
    for ((i = 0; i < 50; i++)); do
        tail -n "+$((before + 1))" "$log" | grep -q 'configuration reloaded' && return 0
        sleep 0.2
    done
    echo "no 'configuration reloaded' within 10 s of SIGHUP"; return 1
}
next_mirror_serves() {
    local hex before gets verified
    hex=$(layer_hex fault)
    reload_mirrors_appliance
    before=$(mirror_metric "$MIRROR_HOST" mismatch) gets=$(primary_gets fault)
    cli_skopeo copy "docker://$NVCR_HOST/nvidia/fault:1" "oci:$W/mirrors/fault:x"
    stored "$hex" || { echo "layer $hex not stored"; return 1; }
    expect_eq "$(primary_gets fault)" "$((gets + 1))" "client requests for the layer (the primary's 429s)"
    expect_eq "$(mirror_metric "$MIRROR_HOST" mismatch)" "$((before + 1))" "mismatches of $MIRROR_HOST"
    verified=$(mirror_metric "$SECOND_MIRROR" verified)
    expect_eq "$verified" 1 "verified fetches from $SECOND_MIRROR (the layer)"
    grep "trying the next mirror" "$LOGS/regcache-mirrors.log" | tail -n 1
}

phase_run() {
    local t=$SECONDS pid
    RESOLVE+=(--resolve "$MIRROR_HOST:443:$MIRROR_IP" --resolve "$SECOND_MIRROR:$MIRROR_IP"
        --resolve "$NVCR_HOST:$THROTTLE_PORT:$NVCR_IP")
    MIRROR_PIDS=()
    if ! mirror_world >"$LOGS/mirror-world.log" 2>&1; then
        run_check "mirrors: the mirror registry and the throttler start" false
    else
        run_check "mirrors: the primary answers 429 to blob GETs (HEAD 200); the mirror holds a copy" primary_throttles
        if mirror_appliance >"$LOGS/mirror-appliance.log" 2>&1; then
            if [[ $DOCKER_OK == 1 ]]; then
                run_check "mirrors: dockerd pulls nvcr.io/nvidia/tiny:25.03 while the primary throttles: every blob from the first mirror, verified, stored" \
                    dockerd_from_mirror
            fi
            run_check "mirrors: skopeo pulls nvcr.io/nvidia/tiny:25.03 while the primary throttles: every blob from the first mirror, verified, stored, fetched once" \
                skopeo_from_mirror
            run_check "mirrors: both mirrors' wrong bytes for nvidia/fault's layer: refused, not stored, counted per mirror; the pull fails" \
                wrong_bytes_refused
            run_check "mirrors: the second mirror mended: the remembered mismatches are skipped (no GET of the layer at either mirror, skips counted); the pull fails" \
                mismatches_remembered
            run_check "mirrors: after a reload (which forgets them), one request for the layer gets it from $SECOND_MIRROR after the first's mismatch; stored" \
                next_mirror_serves
            stop_forget "$REGCACHE_PID"
        else
            run_check "mirrors: the appliance with mirrors starts (logs/regcache-mirrors.log)" false
        fi
    fi
    for pid in "${MIRROR_PIDS[@]}"; do stop_forget "$pid"; done
    info "mirrors phase took $((SECONDS - t)) s"
}
