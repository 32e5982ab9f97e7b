# shellcheck shell=bash
# Phase dns: the appliance answers registry names with its own address (A; AAAA empty, and never asked
# upstream), forwards other names to the upstream resolver (CNAME chains too), over UDP and TCP.
PHASE_NEEDS=(appliance)

aaaa_queries_upstream() { grep -cE "query\[AAAA\] ($(IFS='|'; echo "${INTERCEPTED[*]//./\\.}")) " "$LOGS/dnsmasq.log" || true; }
dns_ttl() {
    local out
    out=$(dig_cli +noall +answer ghcr.io A)
    echo "$out"
    expect_eq "$(awk '{print $2; exit}' <<<"$out")" 60 "ttl of ghcr.io A"
}
aaaa_not_leaked() { # BEFORE: the upstream resolver's count of AAAA queries for intercepted names before
    local after
    after=$(aaaa_queries_upstream)
    echo "AAAA queries for intercepted names seen by the upstream resolver: before $1, after $after"
    [[ $after == "$1" ]]
}

phase_run() {
    local before host
    before=$(aaaa_queries_upstream)
    for host in "${INTERCEPTED[@]}"; do
        run_check "dns: $host A -> $APP_IP" dns_expect "$host" A NOERROR "$APP_IP"
        run_check "dns: $host AAAA -> NOERROR, no records" dns_expect "$host" AAAA NOERROR ""
    done
    run_check "dns: GHCR.IO (upper case) A -> $APP_IP" dns_expect GHCR.IO A NOERROR "$APP_IP"
    run_check "dns: intercepted answer carries ttl 60" dns_ttl
    run_check "dns: $OTHER_HOST forwarded -> $OTHER_IP" dns_expect "$OTHER_HOST" A NOERROR "$OTHER_IP"
    run_check "dns: www.$OTHER_HOST CNAME chain forwarded -> $OTHER_IP" dns_expect "www.$OTHER_HOST" A NOERROR "$OTHER_IP"
    run_check "dns: unknown name nothing.nx.test -> NXDOMAIN" dns_expect nothing.nx.test A NXDOMAIN ""
    run_check "dns: ghcr.io A over TCP -> $APP_IP" dns_expect ghcr.io A NOERROR "$APP_IP" +tcp
    run_check "dns: $OTHER_HOST over TCP forwarded -> $OTHER_IP" dns_expect "$OTHER_HOST" A NOERROR "$OTHER_IP" +tcp
    sleep 0.5
    run_check "dns: AAAA for intercepted names is not forwarded upstream" aaaa_not_leaked "$before"
    info "dns: sub.ghcr.io A -> $(dig_cli +short sub.ghcr.io A | paste -sd' ') (status $(dig_cli sub.ghcr.io A | sed -n 's/.*status: \([A-Z]*\),.*/\1/p'))"
}
