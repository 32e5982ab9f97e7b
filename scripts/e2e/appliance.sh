# shellcheck shell=bash
# The appliance under test and the client dockerd (sourced by scripts/e2e.sh): regcache's config, its
# start (with the setup checks every run makes), stop and reload; the client namespace's trust in its
# CA; a dockerd in the client namespace. State: RC (regcache's folder: config.toml, state/),
# $W/regcache-ca.crt, REGCACHE_PID and ACCESS_LOG (the running appliance), DOCKERD_PID/DOCKER_OK and
# DOCKER_HOST (the client dockerd).

render_config() { # OUT STATE-DIR PUBLIC-CA [PASSWORD-FILE]: the e2e config (with Docker Hub credentials
    # for the appliance when PASSWORD-FILE is given)
    local creds=''
    [[ -n ${4:-} ]] && creds=$(printf 'username = "%s"\npassword_file = "%s"' "$SEED_USER" "$4")
    render "$ASSETS/regcache.toml.in" "$1" STATE_DIR="$2" APP_IP="$APP_IP" DNSMASQ_PORT="$DNSMASQ_PORT" \
        PUBLIC_CA="$3" ADMIN_PORT="$ADMIN_PORT" HUB_CREDENTIALS="$creds"
}

REGCACHE_PID='' APPLIANCE=none   # none | running | stopped
start_regcache() { # CONFIG LOGNAME
    local name=$2
    ip netns exec "$APP_NS" "$BIN" serve --config "$1" >"$LOGS/$name.access.log" 2>"$LOGS/$name.log" </dev/null 9<&- &
    REGCACHE_PID=$!
    track_pid "$REGCACHE_PID" "$name"
    ACCESS_LOG=$LOGS/$name.access.log
    wait_for "regcache 'listening for https'" "$REGCACHE_PID" 150 0.2 grep -q 'listening for https on' "$LOGS/$name.log"
}
stop_regcache() { # run with run_check_here: it reaps the process
    local t=$SECONDS rc=0 i
    kill -TERM "$REGCACHE_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$REGCACHE_PID" || break; sleep 0.2; done
    if alive "$REGCACHE_PID"; then
        echo "regcache still running 10 s after SIGTERM"
        stop_forget "$REGCACHE_PID"; return 1
    fi
    wait "$REGCACHE_PID" || rc=$?
    forget_pid "$REGCACHE_PID"
    echo "exited with $rc after $((SECONDS - t)) s"
    [[ $rc == 0 ]]
}

config_rejects_unknown_key() {
    { cat "$RC/config.toml"; printf '\n[bogus]\nkey = 1\n'; } >"$RC/bad.toml"
    local rc=0
    app timeout 10 "$BIN" serve --config "$RC/bad.toml" 2>"$RC/bad.err" || rc=$?
    cat "$RC/bad.err"
    echo "exit code $rc"
    [[ $rc != 0 && $rc != 124 ]] || return 1
    grep -q bogus "$RC/bad.err" || { echo "the error does not name the unknown key 'bogus'"; return 1; }
}
ca_cert() {
    app "$BIN" ca cert --config "$RC/config.toml" >"$W/regcache-ca.crt"
    openssl x509 -in "$W/regcache-ca.crt" -noout -subject -fingerprint -sha256 -ext basicConstraints
    app "$BIN" ca cert --config "$RC/config.toml" | cmp - "$W/regcache-ca.crt"
}
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
# the client namespace trusts the appliance CA only (system store and certs.d/<host> for every
# intercepted host, as the README's client setup does); [NS CA-FILE]: another namespace and CA (fleet)
setup_client_trust() {
    local d=/etc/netns/${1:-$CLI_NS} ca=${2:-$W/regcache-ca.crt} host
    mkdir -p "$d/docker/certs.d"
    cp -a /etc/containers "$d/containers"
    mkdir -p "$d/containers/certs.d"
    for host in "${INTERCEPTED[@]}"; do
        mkdir -p "$d/docker/certs.d/$host" "$d/containers/certs.d/$host"
        cp "$ca" "$d/docker/certs.d/$host/ca.crt"
        cp "$ca" "$d/containers/certs.d/$host/ca.crt"
    done
    cp -a /etc/ssl "$d/ssl"
    cat "$ca" >>"$d/ssl/certs/ca-certificates.crt"
}

# appliance_up: config.toml (a copy of config-plain.toml; config-creds.toml carries the appliance's own
# Docker Hub credentials for the credentials phase), the setup checks, regcache started, client trust
appliance_up() {
    if [[ $BIN_OK != 1 ]]; then
        skip "every appliance check: the regcache binary is not usable (logs/cargo-build.log)"
        say "e2e: $PASSED passed, $FAILED failed"
        exit 1
    fi
    RC=$W/regcache
    mkdir -p "$RC/state"
    printf '%s\n' "$SEED_PASS" >"$RC/seed.password"
    chmod 600 "$RC/seed.password"
    render_config "$RC/config-plain.toml" "$RC/state" "$PKI/ca.crt"
    render_config "$RC/config-creds.toml" "$RC/state" "$PKI/ca.crt" "$RC/seed.password"
    cp "$RC/config-plain.toml" "$RC/config.toml"
    run_check "config with an unknown table is rejected, naming it" config_rejects_unknown_key
    run_check "regcache ca cert prints a CA certificate (stable across calls)" ca_cert
    [[ -s $W/regcache-ca.crt ]] || die "no CA certificate from regcache ca cert"
    start_regcache "$RC/config.toml" regcache || die "regcache did not start (logs/regcache.log)"
    APPLIANCE=running
    grep -E 'listening for (dns|https|admin) on' "$LOGS/regcache.log" | sed 's/^/INFO: /' | cut -c1-200
    info "regcache up after $((SECONDS - T0)) s"
    run_check "logs 'listening for dns|https|admin on ADDR'" listening_lines
    run_check "admin /healthz is 200 and /ca.crt is the CA from 'ca cert'" admin_checks
    setup_client_trust
}
appliance_down() { # the counted stop of the first appliance (faults and compose need its ports)
    run_check_here "regcache exits 0 within 10 s of SIGTERM" stop_regcache
    APPLIANCE=stopped
}

# ---------------------------------------------------------------------------------------------------
# dockerd in the client namespace

DOCKERD_PID='' DOCKER_OK=0 DOCKERD_STARTS=0
# start_dockerd LOGNAME DIR [SHELL-COMMANDS]: dockerd on DIR (see dockerd_dir), DOCKER_HOST pointed at it;
# it reads the system trust store (/etc/ssl) once, at start; SHELL-COMMANDS (mounts) run before it
start_dockerd() {
    export DOCKER_HOST=unix://$2/docker.sock
    bg "$1" "$CLI_NS" sh -c "$(dockerd_sh "$2" "${3:-}")"
    DOCKERD_PID=$! DOCKER_OK=0 DOCKERD_STARTS=$((DOCKERD_STARTS + 1))
    if wait_for "dockerd" "$DOCKERD_PID" 120 0.5 docker info; then DOCKER_OK=1; fi
    info "dockerd $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?') up after $((SECONDS - T0)) s"
}
stop_dockerd() {
    [[ -n $DOCKERD_PID ]] || return 0
    stop_forget "$DOCKERD_PID"
    DOCKERD_PID='' DOCKER_OK=0
}
DOCKERD_JSON='{"max-concurrent-downloads": 3, "log-level": "info"}'
# a client dockerd on $W/docker (regcache's CA in its system store) unless one runs
need_client_dockerd() {
    [[ -z $DOCKERD_PID ]] || return 0
    [[ -d $W/docker ]] || dockerd_dir "$W/docker" "$DOCKERD_JSON"
    start_dockerd "dockerd$( ((DOCKERD_STARTS == 0)) || echo "-$DOCKERD_STARTS")" "$W/docker"
}
