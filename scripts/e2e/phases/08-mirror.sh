# shellcheck shell=bash
# Phase mirror: clients that keep their own DNS and do not trust regcache's CA pull Docker Hub (and, with
# containerd's ?ns=, other registries') content through the plain-HTTP mirror listener APP_IP:80. They
# run in a mount namespace with a resolv.conf whose nameserver does not answer, the root namespace's
# /etc/ssl (without regcache's CA) and empty /etc/docker and /etc/containers: the mirror is their only
# way to the content. Leaves no client dockerd running.
PHASE_NEEDS=(appliance)

MIRROR_HUB_RE=" \"registry-1\\.docker\\.io\"\$"
mirror_env() { ip netns exec "$CLI_NS" sh -c "$HERMETIC_MOUNTS && $MIRROR_MOUNTS"' && exec "$@"' sh "$@"; }
mirror_env_is_blind() {
    if mirror_env timeout 20 getent hosts "$HUB_HOST"; then echo "$HUB_HOST resolves"; return 1; fi
    if mirror_env curl -sS --max-time 10 -o /dev/null --resolve "$HUB_HOST:443:$APP_IP" "https://$HUB_HOST/v2/"; then
        echo "TLS to the appliance verifies"; return 1
    fi
    local pem
    pem=$(sed -n 2p "$W/regcache-ca.crt")
    if mirror_env grep -rlF "$pem" /etc/ssl /etc/docker /etc/containers; then echo "regcache's CA found there"; return 1; fi
    echo "no DNS for $HUB_HOST, no trust in the appliance's certificate, regcache's CA in none of /etc/ssl, /etc/docker, /etc/containers"
}
# the appliance's TLS handshakes (every outcome), from /metrics
tls_handshakes() {
    app curl -sSf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^regcache_tls_handshakes_total/ {n += $NF} END {print n + 0}'
}
# mirror_pull_logged FUNC ARGS... -- ERE...: FUNC pulls; the access-log lines it added match every ERE,
# and the appliance counted no TLS handshake meanwhile
mirror_pull_logged() {
    local a hs0 hs1 new re args=()
    while [[ $1 != -- ]]; do args+=("$1"); shift; done
    shift
    a=$(wc -l <"$ACCESS_LOG") hs0=$(tls_handshakes)
    "${args[@]}"
    sleep 0.3
    hs1=$(tls_handshakes)
    new=$(tail -n "+$((a + 1))" "$ACCESS_LOG")
    echo "access log lines of the pull:"; sed -n '1,12p' <<<"$new"
    expect_eq "$hs1" "$hs0" "TLS handshakes counted by the appliance during the pull"
    for re in "$@"; do grep -qE "$re" <<<"$new" || { echo "no access-log line of the pull matches /$re/"; return 1; }; done
}
ctr_pull() { # REF KEY: containerd (ctr) against the mirror dockerd's containerd, with hosts.toml mirrors
    local got
    mirror_env timeout 180 ctr --address "$CTR_SOCK" --namespace rce2e images pull --hosts-dir "$M/hosts" \
        --platform linux/amd64 --snapshotter native "$1"
    got=$(mirror_env ctr --address "$CTR_SOCK" --namespace rce2e images ls | awk -v r="$1" '$1 == r {print $3}')
    expect_eq "$got" "${DIGEST[$2]}" "ctr's digest of $1"
}
ctr_hosts() { # hosts.toml per registry: the mirror for pull and resolve (?ns=REGISTRY)
    local h server
    for h in docker.io ghcr.io; do
        server=https://$h
        [[ $h == docker.io ]] && server=https://$HUB_HOST
        mkdir -p "$M/hosts/$h"
        printf 'server = "%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$server" "$APP_IP" >"$M/hosts/$h/hosts.toml"
    done
}
mirror_pulls() {
    run_check "mirror: dockerd with registry-mirrors [\"http://$APP_IP\"] pulls small:1 (digest as pushed; access log: host registry-1.docker.io, no TLS handshake)" \
        mirror_pull_logged docker_pull_fresh small:1 small -- \
        "^$CLI_IP_RE - .*\"(GET|HEAD) /v2/library/small/manifests/[^ ]+ HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"docker/[^\"]*\"$MIRROR_HUB_RE" \
        "^$CLI_IP_RE - .*\"GET /v2/library/small/blobs/sha256:[0-9a-f]{64} HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"docker/[^\"]*\"$MIRROR_HUB_RE"
    if [[ ! -S $CTR_SOCK ]]; then
        run_check "mirror: dockerd's containerd socket at ${CTR_SOCK#"$W"/} (for ctr)" false
        return 0
    fi
    ctr_hosts
    run_check "mirror: ctr --hosts-dir (hosts.toml [host.\"http://$APP_IP\"]) pulls docker.io/library/small:1 (?ns=docker.io, no TLS)" \
        mirror_pull_logged ctr_pull docker.io/library/small:1 small -- \
        "^$CLI_IP_RE - .*\"GET /v2/library/small/blobs/sha256:[0-9a-f]{64}\\?ns=docker\\.io HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"containerd/[^\"]*\"$MIRROR_HUB_RE"
    run_check "mirror: ctr --hosts-dir pulls ghcr.io/acme/tool:v1 (?ns=ghcr.io routes to ghcr.io, no TLS)" \
        mirror_pull_logged ctr_pull ghcr.io/acme/tool:v1 tool -- \
        "^$CLI_IP_RE - .*\"GET /v2/acme/tool/blobs/sha256:[0-9a-f]{64}\\?ns=ghcr\\.io HTTP/1\\.1\" 200 [0-9]+ \"[^\"]*\" \"containerd/[^\"]*\" \"ghcr\\.io\"\$"
}

phase_run() {
    local M=$W/mirror MIRROR_MOUNTS CTR_SOCK=$W/mirror/docker/exec/containerd/containerd.sock
    stop_dockerd
    mkdir -p "$M/empty" "$M/hosts"
    echo "nameserver 127.0.0.9" >"$M/resolv.conf"
    cp -a /etc/ssl "$M/ssl"
    MIRROR_MOUNTS="mount -n --bind '$M/resolv.conf' /etc/resolv.conf && mount -n --bind '$M/ssl' /etc/ssl \
&& mount -n --bind '$M/empty' /etc/docker && mount -n --bind '$M/empty' /etc/containers"
    run_check "mirror: the mirror clients' namespace has no DNS for registry names and no trust in regcache's CA" mirror_env_is_blind
    dockerd_dir "$M/docker" "$(printf '{"registry-mirrors": ["http://%s"], "max-concurrent-downloads": 3, "log-level": "info"}' "$APP_IP")"
    start_dockerd dockerd-mirror "$M/docker" "$MIRROR_MOUNTS"
    if [[ $DOCKER_OK == 1 ]]; then
        mirror_pulls
    else
        run_check "mirror: dockerd starts with registry-mirrors (logs/dockerd-mirror.log)" false
    fi
    stop_dockerd
}
