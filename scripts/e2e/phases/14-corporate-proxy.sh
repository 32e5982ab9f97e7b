# shellcheck shell=bash
# Phase corporate-proxy (issue 13 part 2): a second appliance in namespace CORP whose only way out is a
# real HTTP proxy, tinyproxy (Debian package), in APP with BasicAuth. CORP is joined to APP by its own
# veth pair and has no route to the "internet" addresses nor a working resolver (dns.upstream names a
# dead port), so the appliance reaches the registry, its token service and the CDN only through
# CONNECTs, and the proxy resolves the names (from its own hosts file). skopeo in CORP pulls an image
# through it; tinyproxy's log shows the CONNECTs. Then, the appliance restarted on an emptied cache (so
# that its every request goes out again, through fresh tunnels), a dockerd of CORP's own (the client
# dockerd lives in CLI, whose DNS and route lead to the first appliance; CORP's resolver is this
# appliance, and its system store and certs.d trust this appliance's CA) pulls the same image, and the
# proxy's log lines since show that pull's CONNECTs. A wrong proxy password fails clearly and is never
# printed. The namespace and its processes are removed at the end of the phase.
PHASE_NEEDS=(upstreams)

CORP_NS=rce2e-corp
CORP_IP=10.78.0.2 PROXY_IP=10.78.0.1 PROXY_PORT=3128
CORP_PID='' PROXY_PID='' CORP_DOCKERD_PID='' CORP_DOCKER_OK=0

corp() { ip netns exec "$CORP_NS" "$@"; }

corp_namespace() { # CORP, joined to APP only; loopback up, no forwarding, resolver = its own appliance
    remove_stale_ns "$CORP_NS"
    ip netns add "$CORP_NS"
    ip link add rce2e-px netns "$APP_NS" type veth peer name rce2e-corp netns "$CORP_NS"
    ip -n "$APP_NS" addr add "$PROXY_IP/24" dev rce2e-px
    ip -n "$CORP_NS" addr add "$CORP_IP/24" dev rce2e-corp
    ip -n "$APP_NS" link set rce2e-px up
    ip -n "$CORP_NS" link set lo up
    ip -n "$CORP_NS" link set rce2e-corp up
    corp sysctl -qw net.ipv4.ip_forward=0
    mkdir -p "/etc/netns/$CORP_NS"
    echo "nameserver 127.0.0.1" >"/etc/netns/$CORP_NS/resolv.conf"
}

start_tinyproxy() { # in APP on PROXY_IP, BasicAuth corp:PASS, CONNECT to 443 only; names from its hosts file
    local hp
    { echo "127.0.0.1 localhost"; for hp in "${UPSTREAMS[@]}"; do echo "${hp#*:} ${hp%%:*}"; done; } >"$CW/hosts"
    cat >"$CW/tinyproxy.conf" <<EOF
Listen $PROXY_IP
Port $PROXY_PORT
Timeout 60
MaxClients 32
Allow $CORP_IP
ConnectPort 443
BasicAuth corp $CORP_PASS
DisableViaHeader Yes
LogLevel Connect
LogFile "$CW/tinyproxy.log"
EOF
    : >"$CW/tinyproxy.log"
    bg tinyproxy "$APP_NS" sh -c "mount -n --bind '$CW/hosts' /etc/hosts && exec tinyproxy -d -c '$CW/tinyproxy.conf'"
    PROXY_PID=$!
    wait_for "tinyproxy" "$PROXY_PID" 50 0.1 corp bash -c "exec 3<>/dev/tcp/$PROXY_IP/$PROXY_PORT"
}

corp_config() { # PASSWORD: the CORP appliance's config, proxy credentials corp:PASSWORD
    cat >"$CW/regcache.toml" <<EOF
state_dir = "$CW/state"
[dns]
listen = ["127.0.0.1:53"]
answer_ipv4 = ["$CORP_IP"]
answer_ipv6 = []
# nothing listens there: a name this appliance resolved itself would fail
upstream = ["127.0.0.1:5399"]
[tls]
listen = ["$CORP_IP:443"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[upstream]
extra_ca = ["$PKI/ca.crt"]
proxy = "http://corp:$1@$PROXY_IP:$PROXY_PORT"
no_proxy = ["localhost", "127.0.0.0/8"]
[[registry]]
host = "registry-1.docker.io"
aliases = ["docker.io", "index.docker.io"]
upstream = "https://registry-1.docker.io"
[[registry]]
host = "auth.docker.io"
EOF
}

start_corp_appliance() { # LOGNAME
    ip netns exec "$CORP_NS" "$BIN" serve --config "$CW/regcache.toml" >"$LOGS/$1.access.log" 2>"$LOGS/$1.log" </dev/null 9<&- &
    CORP_PID=$!
    track_pid "$CORP_PID" "$1"
    wait_for "corp regcache" "$CORP_PID" 100 0.2 grep -q 'listening for https on' "$LOGS/$1.log" || return 1
    mkdir -p "$CW/certs"
    cp "$CW/state/certs/ca.crt" "$CW/certs/ca.crt"
}
stop_corp_appliance() { stop_forget "$CORP_PID"; CORP_PID=''; }

corp_skopeo() { isolated "$CORP_NS" timeout 120 skopeo "$@"; }

corp_trust() { # CORP's system store and certs.d trust the CORP appliance's CA (read at dockerd's start)
    local d=/etc/netns/$CORP_NS host
    rm -rf "$d/ssl" "$d/docker"
    cp -a /etc/ssl "$d/ssl"
    cat "$CW/certs/ca.crt" >>"$d/ssl/certs/ca-certificates.crt"
    for host in "$HUB_HOST" "$AUTH_HOST"; do
        mkdir -p "$d/docker/certs.d/$host"
        cp "$CW/certs/ca.crt" "$d/docker/certs.d/$host/ca.crt"
    done
}
start_corp_dockerd() { # a dockerd in CORP on $CW/docker: its resolver is the CORP appliance
    corp_trust
    [[ -d $CW/docker ]] || dockerd_dir "$CW/docker" "$DOCKERD_JSON"
    bg corp-dockerd "$CORP_NS" sh -c "$(dockerd_sh "$CW/docker")"
    CORP_DOCKERD_PID=$! CORP_DOCKER_OK=0
    wait_for "CORP's dockerd" "$CORP_DOCKERD_PID" 120 0.5 corp_docker info || return 1
    CORP_DOCKER_OK=1
}
stop_corp_dockerd() { stop_forget "$CORP_DOCKERD_PID"; CORP_DOCKERD_PID='' CORP_DOCKER_OK=0; }
corp_docker() { DOCKER_HOST=unix://$CW/docker/docker.sock timeout 180 docker "$@"; }

# ---------------------------------------------------------------------------------------------------
# checks

no_direct_route() {
    corp ip route
    if corp curl -sS --max-time 3 --cacert "$PKI/ca.crt" "https://$HUB_IP/v2/"; then
        echo "CORP reached $HUB_IP directly"; return 1
    fi
    # through the proxy, with its password, the registry answers (the proxy resolves the name)
    http_code_in 401 corp curl -sS --max-time 10 --cacert "$PKI/ca.crt" \
        -x "http://corp:$CORP_PASS@$PROXY_IP:$PROXY_PORT" "https://$HUB_HOST/v2/"
}
config_check_masks() {
    local out
    out=$(corp "$BIN" config check --config "$CW/regcache.toml")
    echo "$out"
    grep -qF "upstream.proxy: http://corp:***@$PROXY_IP:$PROXY_PORT" <<<"$out"
    ! grep -qF "$CORP_PASS" <<<"$out"
}
starts_through_proxy() { # LOGNAME (run_check_here: no errexit)
    start_corp_appliance "$1" || return 1
    grep -F 'upstream requests go through a proxy' "$LOGS/$1.log" || return 1
    grep -qF "http://corp:***@$PROXY_IP:$PROXY_PORT" "$LOGS/$1.log"
}
pull_through_proxy() {
    local got
    got=$(corp_skopeo inspect --cert-dir "$CW/certs" --format '{{.Digest}}' docker://docker.io/library/small:1)
    expect_eq "$got" "${DIGEST[small]}" "skopeo inspect digest through appliance and proxy"
    corp_skopeo copy --src-cert-dir "$CW/certs" docker://docker.io/library/small:1 "oci:$CW/oci:small"
    ls -l "$CW/oci/blobs/sha256"
}
proxy_log_shows_connects() {
    grep -E 'CONNECT' "$CW/tinyproxy.log" | tail -n 20
    local host
    for host in "$HUB_HOST" "$AUTH_HOST" "$CDN_HOST"; do
        grep -qF "CONNECT $host:443 HTTP/1.1" "$CW/tinyproxy.log" || { echo "no CONNECT $host:443 in tinyproxy's log"; return 1; }
        # the proxy resolved the name itself
        grep -qF "Established connection to host \"$host\"" "$CW/tinyproxy.log" || { echo "tinyproxy did not connect to $host"; return 1; }
    done
}
# restart_on_empty_cache LOGNAME: the appliance restarted (good password) with its cache removed
restart_on_empty_cache() {
    stop_corp_appliance
    rm -rf "$CW/state/cache"
    starts_through_proxy "$1"
}
dockerd_pulls_through_proxy() {
    local before ref=$HUB_HOST/library/small:1 digests new host
    before=$(wc -l <"$CW/tinyproxy.log")
    corp_docker pull "$ref"
    digests=$(corp_docker image inspect --format '{{join .RepoDigests " "}}' "$ref")
    echo "RepoDigests: $digests"
    [[ " $digests " == *"@${DIGEST[small]} "* ]] || { echo "pushed digest ${DIGEST[small]} not in RepoDigests"; return 1; }
    grep -E '/v2/library/small/(manifests|blobs)/.*"docker/' "$LOGS/corp-regcache-dockerd.access.log" | head -n 5
    grep -qE '/v2/library/small/blobs/.*"docker/' "$LOGS/corp-regcache-dockerd.access.log" ||
        { echo "dockerd's blob GETs are not in the CORP appliance's access log"; return 1; }
    new=$(tail -n "+$((before + 1))" "$CW/tinyproxy.log")
    grep -E 'CONNECT' <<<"$new" | tail -n 20
    for host in "$HUB_HOST" "$AUTH_HOST" "$CDN_HOST"; do
        grep -qF "CONNECT $host:443 HTTP/1.1" <<<"$new" || { echo "no CONNECT $host:443 in tinyproxy's log since the dockerd pull"; return 1; }
        grep -qF "Established connection to host \"$host\"" <<<"$new" || { echo "tinyproxy did not connect to $host"; return 1; }
    done
}

never_printed() { # the proxy password appears in no log or output of the appliance
    local f
    for f in "$LOGS"/corp-regcache*.log "$W"/checks/*corp*; do
        [[ -f $f ]] || continue
        if grep -qF -e "$CORP_PASS" -e "$CORP_WRONG" "$f"; then echo "a proxy password is in $f"; return 1; fi
    done
    echo "checked: $(ls "$LOGS"/corp-regcache*.log | wc -l) appliance logs"
}
wrong_password_fails() { # tinyproxy answers a wrong password with 401; the appliance says so
    local err want
    if corp_skopeo inspect --cert-dir "$CW/certs" --raw docker://docker.io/library/cookiejar:1 2>"$CW/wrong.err"; then
        echo "the pull succeeded with a wrong proxy password"; return 1
    fi
    cat "$CW/wrong.err"
    grep -q '502 Bad Gateway' "$CW/wrong.err"
    err=$(corp curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/api/status" | jq -r '.registries["registry-1.docker.io"].last_error')
    echo "status page: $err"
    want="proxy http://corp:***@$PROXY_IP:$PROXY_PORT: the proxy answered 401 \"Unauthorized\" to CONNECT"
    grep -qF "$want" <<<"$err"
    grep -qF "(it refused the user and password in upstream.proxy)" <<<"$err"
    grep -qF "$want" "$LOGS/corp-regcache-wrong.log"
}

phase_run() {
    CW=$W/corp
    mkdir -p "$CW"
    CORP_PASS=$(openssl rand -hex 10) CORP_WRONG=$(openssl rand -hex 10)
    command -v tinyproxy >/dev/null || { run_check "corp: tinyproxy installed (apt-get install tinyproxy)" false; return; }
    corp_namespace
    run_check_here "corp: tinyproxy starts in APP with BasicAuth" start_tinyproxy
    corp_config "$CORP_PASS"
    run_check "corp: CORP has no route to the upstreams, only to the proxy" no_direct_route
    run_check "corp: config check shows the proxy with its password masked" config_check_masks
    run_check_here "corp: the appliance starts, logging the masked proxy" starts_through_proxy corp-regcache
    run_check "corp: skopeo pulls docker.io/library/small:1 via appliance, tinyproxy, registry" pull_through_proxy
    run_check "corp: tinyproxy's log shows CONNECTs to registry, token service and CDN" proxy_log_shows_connects
    run_check_here "corp: the appliance restarts on an emptied cache" restart_on_empty_cache corp-regcache-dockerd
    run_check_here "corp: a dockerd in CORP starts (logs/corp-dockerd.log)" start_corp_dockerd
    if [[ $CORP_DOCKER_OK == 1 ]]; then
        run_check "corp: dockerd pulls $HUB_HOST/library/small:1 via appliance, tinyproxy, registry; the proxy's log shows that pull's CONNECTs to registry, token service and CDN" \
            dockerd_pulls_through_proxy
    fi
    stop_corp_dockerd
    stop_corp_appliance
    corp_config "$CORP_WRONG"
    run_check_here "corp: the appliance starts with a wrong proxy password" starts_through_proxy corp-regcache-wrong
    run_check "corp: a wrong proxy password fails clearly (the proxy's 401 on the status page and log)" wrong_password_fails
    run_check "corp: the proxy password is never printed" never_printed
    stop_corp_appliance
    stop_forget "$PROXY_PID"
    remove_ns "$CORP_NS"
}
