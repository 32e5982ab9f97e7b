# shellcheck shell=bash
# Phase offline: every upstream process stopped (the registries, the token service, the CDN; dnsmasq and
# regcache stay). Clients with fresh state pull the cached images again by their unchanged names, and
# what must stay refused stays refused; "INFO: offline: ..." lines record cases observed but not
# asserted. Then the access log of everything so far: its format, and 200 blob GETs for every upstream.
# Leaves the upstreams stopped and no client dockerd running.
PHASE_NEEDS=(appliance warm-cache)

upstreams_refuse() { # run with run_check_here: it reaps the processes
    local hp rc
    stop_upstreams verbose
    for hp in "${UPSTREAMS[@]}"; do
        rc=0
        app curl -sS --max-time 3 -k -o /dev/null --resolve "${hp%%:*}:443:${hp#*:}" "https://${hp%%:*}/" || rc=$?
        echo "${hp%%:*} (${hp#*:}): curl exit $rc"
        [[ $rc == 7 ]] || { echo "want curl exit 7 (connection refused)"; return 1; }
    done
}
offline_paths_taken() { # FROM-LINE: the pulls went through the offline rules (regcache's log after FROM-LINE)
    local host repo
    for host in "$HUB_HOST" "$GHCR_HOST" "$NVCR_HOST"; do
        tail -n "+$(($1 + 1))" "$LOGS/regcache.log" | grep -E "answering /v2/ locally.* registry=${host//./\\.}( |\$)" | sed -n 1p | cut -c1-300 \
            | grep . || { echo "no 'answering /v2/ locally' for $host"; return 1; }
    done
    for repo in library/small acme/tool nvidia/tiny; do
        tail -n "+$(($1 + 1))" "$LOGS/regcache.log" | grep -E "serving a stale tag.* repo=\"?$repo\"? " | sed -n 1p | cut -c1-300 \
            | grep . || { echo "no 'serving a stale tag' for $repo"; return 1; }
    done
}
offline_dockerd() {
    stop_dockerd
    dockerd_dir "$W/docker-offline" "$DOCKERD_JSON"
    start_dockerd dockerd-offline "$W/docker-offline"
    if [[ $DOCKER_OK != 1 ]]; then
        run_check "offline: dockerd starts with a fresh data root (logs/dockerd-offline.log)" false
        return 0
    fi
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
}
offline_skopeo_podman() {
    local SKOPEO_OUT=$W/skopeo-offline PODMAN_DIR=$W/podman-offline
    # skopeo inspect without --no-tags: /tags/list is answered from the cached tag mappings
    run_check "offline: skopeo (new oci dir) copies docker.io/library/small:1" offline_evidence skopeo_pull docker.io/library/small:1 small
    run_check "offline: skopeo copies docker.io/library/alpine-ish:latest (OCI index)" \
        offline_evidence skopeo_pull docker.io/library/alpine-ish:latest alpine
    run_check "offline: skopeo copies ghcr.io/acme/tool:v1" offline_evidence skopeo_pull ghcr.io/acme/tool:v1 tool
    run_check "offline: skopeo copies nvcr.io/nvidia/tiny:25.03" offline_evidence skopeo_pull nvcr.io/nvidia/tiny:25.03 tiny
    run_check "offline: podman (fresh --root) pulls docker.io/library/small:1" offline_evidence podman_pull docker.io/library/small:1 small
    run_check "offline: podman pulls docker.io/library/alpine-ish:latest (OCI index)" \
        offline_evidence podman_pull docker.io/library/alpine-ish:latest alpine
    run_check "offline: podman pulls ghcr.io/acme/tool:v1" offline_evidence podman_pull ghcr.io/acme/tool:v1 tool
    run_check "offline: podman pulls nvcr.io/nvidia/tiny:25.03" offline_evidence podman_pull nvcr.io/nvidia/tiny:25.03 tiny
}
still_refused() { # what must stay refused while the upstreams are down
    run_check "offline: anonymous skopeo still cannot read docker.io/e2eprivate/secret:1 (cached by a read with credentials)" \
        offline_evidence anonymous_private_denied
    run_check "offline: quay.io without credentials: skopeo fails; cached layer and manifest GETs are refused" \
        offline_evidence basic_refused - "401 403 502 503 504"
    run_check "offline: quay.io with a wrong password: skopeo fails; cached layer and manifest GETs are refused" \
        offline_evidence basic_refused "$QUAY_WRONG" "401 403 502 503 504"
    run_check "offline: quay.io with the credentials the upstream accepted: layer and manifest served from the cache" \
        offline_evidence basic_cached_for_owner
}

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

phase_run() {
    local from host
    from=$(wc -l <"$LOGS/regcache.log")
    run_check_here "offline: every upstream process stopped (registries, token service, CDN): connections refused" upstreams_refuse
    offline_dockerd     # regcache's CA back in its system store
    stop_dockerd
    offline_skopeo_podman
    run_check "offline: regcache answered /v2/ locally and served the tags stale (its log)" offline_paths_taken "$from"
    still_refused
    offline_info "skopeo inspect (with the tag list) of ghcr.io/acme/tool:v1" offline-inspect-tags.log \
        cli_skopeo inspect "docker://ghcr.io/acme/tool:v1"
    offline_info "skopeo --creds inspect of $QUAY_REF (Basic auth; /v2/ is answered locally without a challenge)" \
        offline-quay-creds.log cli_skopeo inspect --creds "$QUAY_USER:$QUAY_PASS" --format '{{.Digest}}' "docker://$QUAY_REF"
    run_check "access log: every line is '\$remote_addr - \$remote_user [\$time_local] \"\$request\" \$status \$body_bytes_sent \"\$http_referer\" \"\$http_user_agent\" \"\$host\"'" access_log_format
    for host in "$HUB_HOST" "$GHCR_HOST" "$NVCR_HOST" "$QUAY_HOST"; do
        run_check "access log: lines for \"$host\" with 200 blob GETs" access_log_host "$host"
    done
}
