# shellcheck shell=bash
# Phase warm: `regcache warm --via` a running appliance pulls images into its cache through the path a
# client pull takes (Docker Hub's token service on its own host, the CDN redirect, an OCI index and its
# platforms); a second run finds every object cached, and dockerd's pull of the warmed image then
# takes every blob from the cache (no blob GET at the upstream or its CDN); a missing tag fails with its
# reason.
PHASE_NEEDS=(appliance upstreams client-dockerd)

warm_json() { # IMAGE...: regcache warm --json through the appliance, trusting its CA
    app "$BIN" warm --config "$RC/config.toml" --via "https://$APP_IP" --ca "$W/regcache-ca.crt" --json "$@"
}
warm_fetches() {
    local out
    out=$(warm_json docker.io/library/warmup:1)
    echo "$out"
    jq -e 'length == 1 and .[0].error == null and .[0].fetched == 4 and .[0].cached == 0' <<<"$out" >/dev/null
}
warm_finds_it_cached() {
    local out
    out=$(warm_json docker.io/library/warmup:1)
    echo "$out"
    jq -e '.[0].error == null and .[0].fetched == 0 and .[0].cached == 4' <<<"$out" >/dev/null
}
upstream_blob_gets() { # REPO: GETs of REPO's blobs at Docker Hub's registry and of its blob files at the CDN
    local hexes
    hexes=$(awk '$1 == "blob" {sub(/^sha256:/, "", $2); print $2}' "$W/images/warmup/push-plan" | paste -sd'|')
    cat "$LOGS"/upstream-hub*.log "$LOGS"/upstream-cdn*.log |
        grep -cE "\"GET (/v2/$1/blobs/|/docker/registry/v2/blobs/sha256/../($hexes)/data)" || true
}
dockerd_pulls_warmed() { # docker pull of the warmed image: through the appliance, no upstream blob GET
    local before through after
    before=$(upstream_blob_gets library/warmup)
    through=$(grep -c '"GET /v2/library/warmup/blobs/.*"docker/' "$ACCESS_LOG" || true)
    docker_pull_fresh docker.io/library/warmup:1 warmup || return 1
    after=$(upstream_blob_gets library/warmup)
    through=$(($(grep -c '"GET /v2/library/warmup/blobs/.*"docker/' "$ACCESS_LOG" || true) - through))
    echo "dockerd's blob GETs through the appliance: $through; upstream blob GETs before $before, after $after"
    [[ $through -ge 3 ]] || { echo "dockerd did not fetch the config and 2 layers through the appliance"; return 1; }
    expect_eq "$after" "$before" "upstream blob GETs (hub registry and CDN) during dockerd's pull"
}
warm_index_platforms() { # every platform of the OCI index: 1 index + 2 manifests + their blobs
    local out
    out=$(warm_json --all-platforms docker.io/library/alpine-ish:latest)
    echo "$out"
    jq -e '.[0].error == null and (.[0].fetched + .[0].cached) >= 5' <<<"$out" >/dev/null
}
warm_missing_fails() {
    local out rc=0
    out=$(warm_json ghcr.io/acme/tool:v1 ghcr.io/acme/tool:no-such-tag) || rc=$?
    echo "exit $rc: $out"
    [[ $rc != 0 ]] || { echo "exit 0 although an image failed"; return 1; }
    jq -e '.[0].error == null and (.[1].error | test("404"))' <<<"$out" >/dev/null
}

warm_job_ran() { # the config's [[warm]] job warmed docker.io/library/kept:1 (manifest, config, layer)
    local metrics i
    for i in $(seq 1 30); do
        metrics=$(app curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics")
        grep -q '^regcache_warm_runs_total{job="1",result="ok"} 1' <<<"$metrics" && break
        sleep 1
    done
    grep '^regcache_warm' <<<"$metrics"
    grep -q '^regcache_warm_runs_total{job="1",result="ok"} 1' <<<"$metrics" &&
        grep -q '^regcache_warm_objects_total{job="1",how="fetched"} 3' <<<"$metrics" &&
        app curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/api/status" |
        jq -e '.warm[0].ok == true and .warm[0].images == ["docker.io/library/kept:1"]' >/dev/null
}
cache_ls_json() { # `regcache cache ls --json` (beside the running appliance) lists what warm stored
    local out
    out=$(app "$BIN" cache ls --json --config "$RC/config.toml" --repo library/warmup)
    jq -c '.total' <<<"$out"
    jq -e '.total.objects == 4 and ([.objects[].refs[].repo] | unique) == ["library/warmup"]' <<<"$out" >/dev/null
}
config_check_json() { # `regcache config check --json` on the running appliance's config
    local out
    out=$(app "$BIN" config check --json --config "$RC/config.toml")
    echo "$out" | jq -c '{ok, registries, names, problems}'
    jq -e '.ok == true and .problems == [] and .registries > 0' <<<"$out" >/dev/null
}

phase_run() {
    run_check "warm: the config's [[warm]] job ran at start (metrics per job, status page line)" warm_job_ran
    run_check "warm: regcache warm --via fetches docker.io/library/warmup:1 (manifest, config, 2 layers)" warm_fetches
    run_check "warm: a second run finds all 4 objects already cached" warm_finds_it_cached
    if [[ $DOCKER_OK == 1 ]]; then
        run_check "warm: dockerd pulls docker.io/library/warmup:1 from the cache (no blob GET upstream or at the CDN)" \
            dockerd_pulls_warmed
    fi
    run_check "json: cache ls --json lists the 4 objects of library/warmup with their repository" cache_ls_json
    run_check "json: config check --json says ok with no problems" config_check_json
    run_check "warm: --all-platforms warms an OCI index and each platform's manifest and blobs" warm_index_platforms
    run_check "warm: a missing tag fails with the registry's 404 and a non-zero exit; the other image is warmed" warm_missing_fails
}

