# shellcheck shell=bash
# Phase credentials: online again (the upstream processes restarted on their storage), the appliance's
# own Docker Hub credentials switched in and out with SIGHUP (anonymous skopeo and dockerd read the
# private repository only while they are configured); then /metrics after all the pulls, checked with
# promtool. Leaves the upstreams running and a client dockerd (dockerd-online) running.
PHASE_NEEDS=(appliance)

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
promtool_metrics() { # METRICS-FILE
    command -v promtool >/dev/null || { echo "promtool missing (Debian package prometheus)"; return 1; }
    [[ -s $1 ]] || { echo "no metrics fetched"; return 1; }
    echo "$(grep -c '^regcache_' "$1") samples"
    promtool check metrics <"$1"
}
switch_credentials() {
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
}

phase_run() {
    local SKOPEO_OUT=$W/skopeo-online metrics=$W/metrics-after-pulls.txt
    [[ $UPSTREAMS_UP == 0 ]] || stop_upstreams     # the offline phase did not run
    run_check_here "online: every upstream process restarted (same storage)" start_upstreams -online
    stop_dockerd
    dockerd_dir "$W/docker-online" "$DOCKERD_JSON"
    start_dockerd dockerd-online "$W/docker-online"    # regcache's CA in its system store again, no login
    switch_credentials
    # Recorded, not asserted: the anonymous reads above were confirmed with the appliance's credentials,
    # within cache.offline_auth_window; with the credentials gone and the upstreams down, are they still honoured?
    stop_upstreams
    offline_info "after the appliance's credentials were removed, anonymous skopeo inspect of docker.io/e2eprivate/secret:1" \
        offline-private-after-credentials.log cli_skopeo inspect --no-tags --format '{{.Digest}}' docker://docker.io/e2eprivate/secret:1
    start_upstreams -online2 || run_check "online: every upstream process restarted again" false
    app curl -sS --max-time 10 -o "$metrics" "http://127.0.0.1:$ADMIN_PORT/metrics" || true
    grep -E '^regcache_(cache_hits_total|cache_misses_total|http_requests_total)[ {]' "$metrics" | sed 's/^/INFO: metrics: /' || true
    run_check "metrics: /metrics after the pulls (metrics-after-pulls.txt) passes promtool check metrics" promtool_metrics "$metrics"
}
