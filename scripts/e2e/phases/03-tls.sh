# shellcheck shell=bash
# Phase tls: a certificate for every intercepted name that chains to the appliance CA, none for other
# names, and no route from the client to the upstream addresses.
PHASE_NEEDS=(appliance)

tls_ok() { # HOST: the appliance serves a certificate for HOST that chains to its CA
    local code
    code=$(cli_curl -o /dev/null -w '%{http_code}' "https://$1/v2/")
    echo "HTTP $code from https://$1/v2/"
}
no_tls_for_other_names() {
    if cli_curl --max-time 10 -o /dev/null --resolve "$OTHER_HOST:443:$APP_IP" "https://$OTHER_HOST/"; then
        echo "the appliance served a trusted certificate for $OTHER_HOST"; return 1
    fi
}
client_isolated() {
    if cli curl -sS --max-time 3 -k -o /dev/null --resolve "$GHCR_HOST:443:$GHCR_IP" "https://$GHCR_HOST/v2/"; then
        echo "client reached $GHCR_IP directly"; return 1
    fi
}
# skopeo verifies with Go's crypto/x509 (name constraints, one-label wildcards): the appliance's
# `*.ghcr.io` leaf for pkg.ghcr.io and its `*.pkg.ghcr.io` leaf for x.pkg.ghcr.io (ghcr.io's alias
# `*.ghcr.io` routes both to ghcr.io), trusted through the client's system store only.
go_client_wildcard() { # NAME
    local digest
    digest=$(cli_skopeo inspect --format '{{.Digest}}' "docker://$1/acme/tool:v1")
    expect_eq "$digest" "${DIGEST[tool]}" "skopeo inspect digest through $1"
    grep -qF "issued leaf certificate sni=$1 leaf=*.${1#*.}" "$LOGS/regcache.log" ||
        { echo "no *.${1#*.} leaf issued for $1 (logs/regcache.log)"; return 1; }
}

phase_run() {
    local host
    for host in "${INTERCEPTED[@]}"; do run_check "tls: $host certificate verifies against the appliance CA" tls_ok "$host"; done
    run_check "tls: no trusted certificate for a non-registry name ($OTHER_HOST)" no_tls_for_other_names
    local name
    for name in pkg.ghcr.io x.pkg.ghcr.io; do
        run_check "tls: skopeo (Go crypto/x509) accepts the wildcard leaf for $name (alias *.ghcr.io)" go_client_wildcard "$name"
    done
    run_check "isolation: the client cannot reach upstream addresses" client_isolated
    info "client sees on https://$HUB_HOST/v2/: $(cli_curl -o /dev/null -w '%{http_code} www-authenticate=%header{www-authenticate}' "https://$HUB_HOST/v2/" 2>&1)"
}
