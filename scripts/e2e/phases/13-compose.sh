# shellcheck shell=bash
# Phase compose: the repo's docker-compose.yml, run by docker-compose (v1) on a dockerd inside APP
# (network_mode: host is APP's network), with the image from scripts/docker-image.sh (nothing is pulled;
# `up --no-build`), ./certs holding the CA the clients already trust, a fresh ./cache, and
# ./config/regcache.toml the e2e config. A representative set of the client checks runs against it.
PHASE_NEEDS=(stopped-appliance upstreams client-dockerd)

AD=$W/app-docker     # APP's dockerd
CD=$W/compose        # the compose project folder
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
    dockerd_dir "$AD" '{"log-level": "info"}'
    bg dockerd-app "$APP_NS" sh -c "$(dockerd_sh "$AD")"
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


compose_bring_up() {
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
}
compose_clients() {
    local SKOPEO_OUT=$W/skopeo-compose PODMAN_DIR=$W/podman-compose
    run_check "compose: admin /ca.crt is the CA put in ./certs" compose_ca
    run_check "compose: dns: docker.io A -> $APP_IP" dns_expect docker.io A NOERROR "$APP_IP"
    run_check "compose: dns: ghcr.io A -> $APP_IP" dns_expect ghcr.io A NOERROR "$APP_IP"
    run_check "compose: dns: $OTHER_HOST forwarded -> $OTHER_IP" dns_expect "$OTHER_HOST" A NOERROR "$OTHER_IP"
    if [[ $DOCKER_OK == 1 ]]; then
        run_check "compose: dockerd pulls docker.io/library/small:1 (cold cache)" docker_pull_fresh docker.io/library/small:1 small
        run_check "compose: dockerd pulls ghcr.io/acme/tool:v1 (cold cache)" docker_pull_fresh ghcr.io/acme/tool:v1 tool
    fi
    run_check "compose: skopeo copies docker.io/library/small:1" skopeo_pull docker.io/library/small:1 small
    run_check "compose: podman (fresh --root) pulls docker.io/library/small:1" podman_pull docker.io/library/small:1 small
    run_check "compose: the container's access log (docker logs) has 200 blob GETs for $HUB_HOST and $GHCR_HOST" \
        compose_access_logged "$HUB_HOST" "$GHCR_HOST"
    run_check "compose: ./cache holds the fills, ./cache and ./certs owned by uid 10001" compose_cache_owned
    run_check "compose: docker inspect health becomes 'healthy' (regcache healthcheck; interval 30s)" compose_healthy
    run_check_here "compose: docker-compose stop (regcache exits 0) and down (no container left)" compose_down
}

phase_run() {
    local APP_DOCKER_PID='' COMPOSE_UP=0 CID='' pid
    compose_bring_up
    [[ $COMPOSE_UP != 1 ]] || compose_clients
    if [[ -n $APP_DOCKER_PID ]]; then
        [[ $COMPOSE_UP == 1 ]] && { compose down >"$LOGS/compose-down.log" 2>&1 || true; }
        stop_forget "$APP_DOCKER_PID"
    fi
}
