# shellcheck shell=bash
# Phase docker-trust: dockerd's trust for Docker Hub names, as FINDING lines, each also a check asserting
# what was found. dockerd is restarted with the host's own /etc/ssl, so regcache's CA is NOT in its system
# trust store, only in certs.d/<host>/ca.crt for the intercepted hosts (registry-1.docker.io,
# auth.docker.io, docker.io, index.docker.io, ...). Found: a registry-1.docker.io/... name is an ordinary
# registry to dockerd, which uses certs.d/registry-1.docker.io (and reaches the realm auth.docker.io
# through the appliance); Docker Hub names (docker.io/..., short names) go to the official index, which
# uses only the system store. Leaves no client dockerd running.
PHASE_NEEDS=(appliance client-dockerd)

certsd_only_findings() {
    local nostore="regcache's CA only in certs.d, not in the system store" before after a b a_token=no b_err
    local a_log=$LOGS/finding-certsd-registry-1.log b_log=$LOGS/finding-certsd-docker.io.log
    before=$(docker_token_lines)
    a=$(attempt "$a_log" docker_pull_fresh "$HUB_HOST/library/small:1" small)
    after=$(docker_token_lines)
    [[ $after -gt $before ]] && a_token=yes
    b=$(attempt "$b_log" docker_pull_fresh docker.io/library/small:1 small)
    b_err=$(grep -oE 'x509: .*' "$b_log" | head -n 1 || true)
    say "FINDING: $nostore: dockerd pull of $HUB_HOST/library/small:1 $a (logs/${a_log##*/})"
    say "FINDING: ... and for it dockerd fetched a token from $AUTH_HOST through the appliance: $a_token"
    say "FINDING: $nostore: dockerd pull of docker.io/library/small:1 $b${b_err:+ ($b_err)} (logs/${b_log##*/})"
    run_check "dockerd, $nostore: $HUB_HOST/library/small:1 pulls (certs.d/$HUB_HOST is used)" \
        outcome_is "$a" succeeds "$a_log"
    run_check "dockerd, $nostore: the $HUB_HOST pull got its token from $AUTH_HOST through the appliance" \
        expect_eq "$a_token" yes "new dockerd token GET in the access log ($before -> $after lines)"
    run_check "dockerd, $nostore: docker.io/library/small:1 fails with an x509 error (Docker Hub names use only the system store)" \
        outcome_is "$b" fails "$b_log" 'x509: '
}

phase_run() {
    if [[ $DOCKER_OK != 1 ]]; then
        skip "dockerd trust for Docker Hub names: dockerd did not start"
        return 0
    fi
    stop_dockerd
    mv "/etc/netns/$CLI_NS/ssl" "$W/client-ssl"     # back below; cleanup removes /etc/netns/$CLI_NS anyway
    start_dockerd dockerd-certsd-only "$W/docker"
    if [[ $DOCKER_OK == 1 ]]; then
        certsd_only_findings
    else
        run_check "dockerd restarts without regcache's CA in the system store (logs/dockerd-certsd-only.log)" false
    fi
    stop_dockerd
    mv "$W/client-ssl" "/etc/netns/$CLI_NS/ssl"
}
